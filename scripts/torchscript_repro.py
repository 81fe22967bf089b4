"""Byte-reproducible TorchScript files.

torch.jit.save writes, beside the code and the weights, a `.debug_pkl`
record per code file that maps the TorchScript back to the Python source it
came from, with absolute paths (the venv, the export script): two exports
from different directories differ only there. `save` writes the archive
torch.jit.save would, then rewrites it without those records (libtorch
loads an archive without them; error messages then name no Python source
line), with every entry stored uncompressed, in the original order, and
dated 1980-01-01 (the zip epoch, what torch writes too). The result depends
only on the module, its weights and the torch version.
"""
import io
import zipfile

import torch

FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def save(module, path):
    raw = io.BytesIO()
    torch.jit.save(module, raw)
    raw.seek(0)
    src = zipfile.ZipFile(raw)
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as out:
            for info in src.infolist():
                if info.filename.endswith(".debug_pkl"):
                    continue
                entry = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE)
                entry.compress_type = zipfile.ZIP_STORED
                entry.external_attr = 0o644 << 16
                entry.create_system = 3
                out.writestr(entry, src.read(info.filename))
