"""Release helpers for images/build.sh (Python 3.11+, standard library only).

  release.py check-models CONFIG DISK_TREE
      every model and tokenizer the release config names, read from the
      disk tree, must have the SHA-256 the config pins
  release.py manifest CONFIG OUT RELEASE VERITY_ROOT
      writes OUT/release.json: what the release is made of and what a
      client or auditor compares (kernel, initramfs, command line, the root
      disk's verity root, the models' identities, the price bounds)
"""
import hashlib
import json
import sys
import tomllib


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_models(config, tree):
    cfg = tomllib.load(open(config, "rb"))
    for name, m in sorted(cfg.get("models", {}).items()):
        for key, digest in (("path", "sha256"), ("tokenizer", "tokenizer_sha256")):
            got = sha256(tree + m[key])
            if got != m[digest]:
                sys.exit(
                    f"images/build.sh: {name}: {m[key]} has SHA-256 {got}; the release config pins "
                    f"{m[digest]} (a different export: check the versions in scripts/torch-env.sh, "
                    "or pin the new digests in images/enclave.toml)"
                )


def manifest(config, out, release, root):
    cfg = tomllib.load(open(config, "rb"))
    doc = {
        "release": release,
        "kernel_sha256": sha256(f"{out}/vmlinuz"),
        "initrd_sha256": sha256(f"{out}/initrd.cpio"),
        "cmdline": open(f"{out}/cmdline.txt").read(),
        "disk_verity_root": root,
        "models": [
            {
                "name": n,
                "version": m.get("version"),
                "sha256": m["sha256"],
                "tokenizer_sha256": m["tokenizer_sha256"],
            }
            for n, m in sorted(cfg.get("models", {}).items())
        ],
        "prices_from": cfg.get("prices_from", "release"),
        "price_bounds": cfg.get("price_bounds", {}),
        "max_request_lifetime_secs": cfg.get("max_request_lifetime_secs"),
    }
    with open(f"{out}/release.json", "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "check-models":
        check_models(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 6 and sys.argv[1] == "manifest":
        manifest(*sys.argv[2:])
    else:
        sys.exit(__doc__)
