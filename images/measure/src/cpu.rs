//! vCPU models and their CPUID signature.
//!
//! KVM starts every vCPU with the CPUID leaf 1 EAX signature (family, model,
//! stepping) in RDX, and that register is part of the measured VMSA. The
//! encoding is AMD's CPUID Specification (#25481), "CPUID Fn0000_0001_EAX
//! Family, Model, Stepping Identifiers": stepping in bits 3:0, base model
//! 7:4, base family 11:8, extended model 19:16, extended family 27:20; a
//! family above 0xF is written as base 0xF plus the excess in the extended
//! family. The family/model/stepping of each model name are those of QEMU's
//! built-in x86 CPU definitions (`target/i386/cpu.c`); versioned names
//! (`-v1`, `-v2`, ...) share the signature of their base model.

/// A QEMU vCPU model name and its family, model and stepping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuModel {
    /// QEMU `-cpu` name.
    pub name: &'static str,
    /// CPU family.
    pub family: u32,
    /// CPU model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

const fn m(name: &'static str, family: u32, model: u32, stepping: u32) -> VcpuModel {
    VcpuModel {
        name,
        family,
        model,
        stepping,
    }
}

/// The vCPU models this tool knows.
pub const VCPU_MODELS: &[VcpuModel] = &[
    m("EPYC", 23, 1, 2),
    m("EPYC-v1", 23, 1, 2),
    m("EPYC-v2", 23, 1, 2),
    m("EPYC-IBPB", 23, 1, 2),
    m("EPYC-v3", 23, 1, 2),
    m("EPYC-v4", 23, 1, 2),
    m("EPYC-Rome", 23, 49, 0),
    m("EPYC-Rome-v1", 23, 49, 0),
    m("EPYC-Rome-v2", 23, 49, 0),
    m("EPYC-Rome-v3", 23, 49, 0),
    m("EPYC-Milan", 25, 1, 1),
    m("EPYC-Milan-v1", 25, 1, 1),
    m("EPYC-Milan-v2", 25, 1, 1),
    m("EPYC-Genoa", 25, 17, 0),
    m("EPYC-Genoa-v1", 25, 17, 0),
    m("EPYC-Turin", 26, 0, 0),
    m("EPYC-Turin-v1", 26, 0, 0),
];

/// The CPUID Fn0000_0001_EAX signature for a family, model and stepping.
pub const fn cpuid_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (base_family, ext_family) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (ext_family << 20)
        | (((model >> 4) & 0xf) << 16)
        | (base_family << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// A vCPU model name this tool does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vCPU type {name:?}; known types: {known} (or give the CPUID signature with --vcpu-sig)")]
pub struct UnknownVcpuType {
    /// The name given.
    pub name: String,
    /// The known names, comma separated.
    pub known: String,
}

/// The CPUID signature of a QEMU vCPU model (names are matched exactly,
/// then case-insensitively).
pub fn vcpu_signature(name: &str) -> Result<u32, UnknownVcpuType> {
    VCPU_MODELS
        .iter()
        .find(|v| v.name == name)
        .or_else(|| {
            VCPU_MODELS
                .iter()
                .find(|v| v.name.eq_ignore_ascii_case(name))
        })
        .map(|v| cpuid_signature(v.family, v.model, v.stepping))
        .ok_or_else(|| UnknownVcpuType {
            name: name.to_string(),
            known: VCPU_MODELS
                .iter()
                .map(|v| v.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_of_known_models() {
        // EPYC-v4 -> 0x800f12 is stated by the vector file's "about".
        assert_eq!(vcpu_signature("EPYC-v4"), Ok(0x0080_0f12));
        assert_eq!(vcpu_signature("epyc-milan"), Ok(0x00a0_0f11));
        assert_eq!(vcpu_signature("EPYC-Genoa"), Ok(0x00a1_0f10));
        assert_eq!(vcpu_signature("EPYC-Rome"), Ok(0x0083_0f10));
        assert_eq!(vcpu_signature("EPYC-Turin"), Ok(0x00b0_0f00));
        let e = vcpu_signature("Skylake").unwrap_err();
        assert!(e.to_string().contains("EPYC-Milan"), "{e}");
    }
}
