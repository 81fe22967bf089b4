//! The `[snp]` and `[tdx]` tables of a Cocoon verifier policy, with the
//! reference values this crate computes.
//!
//! Owns the text only; the format is `cocoon-verifier`'s (`policy.rs`, its
//! TOML form in `policy/toml_form.rs`), whose reader requires
//! every reference key to be present, as a value or as `"skip"`. The tables
//! here carry the launch measurements this tool computed; every other key
//! is a platform or deployment choice, written at the strict default (VMPL
//! 0, debug and migration agent forbidden, TCB status UpToDate) or skipped
//! explicitly, with a comment saying so. A tests/ case parses both tables
//! with the verifier's own reader.

use crate::Measurement;

/// Where a reference value came from, written as a comment beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// Computed by a calculation checked against reference vectors.
    Computed,
    /// Replayed from an event log.
    Replayed,
    /// Read from a quote.
    FromQuote,
    /// Computed, but with no reference vector to check the calculation:
    /// the reason is written out.
    Unverified(String),
}

/// A reference value or the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Require this value.
    Value(Measurement, Provenance),
    /// Skip the check, for the reason given.
    Skip(String),
}

fn header(platform: &str, release: &str) -> String {
    // `{:?}` escapes quotes and newlines: nothing in the name can end the comment.
    format!(
        "# cocoon-measure {}: {platform} reference values for image release {release:?}.\n# Put this table in the policy file whose `release` is that name. Keys other than the\n# launch measurements are deployment choices, at strict defaults or skipped on purpose.\n",
        env!("CARGO_PKG_VERSION")
    )
}

fn note(p: &Provenance) -> String {
    match p {
        Provenance::Computed => String::new(),
        Provenance::Replayed => "# replayed from the event log\n".into(),
        Provenance::FromQuote => "# read from the quote\n".into(),
        Provenance::Unverified(why) => format!(
            "# UNVERIFIED: no reference vector ({})\n",
            why.replace('\n', " ")
        ),
    }
}

/// The `[snp]` table pinning these launch digests.
pub fn snp_table(release: &str, measurements: &[Measurement]) -> String {
    let list = measurements
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}[snp]\nmeasurements = [{list}]\n# platform TCB: not an image value; set the minimum you accept\nmin_tcb = \"skip\"\nvmpl = 0\nreport_data = \"skip\"\nhost_data = \"skip\"\nid_key_digests = \"skip\"\nauthor_key_digests = \"skip\"\nsmt = \"allowed\"\n# AMD's CRL must come with the evidence (the host attaches it)\nrevocation = \"required\"\nallow_debug = false\nallow_migration_agent = false\n",
        header("SEV-SNP", release)
    )
}

/// The TDX reference values of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxReferences {
    /// MRTD.
    pub mrtd: Reference,
    /// RTMR0..3.
    pub rtmr: [Reference; 4],
}

/// The `[tdx]` table pinning these values.
pub fn tdx_table(release: &str, r: &TdxReferences) -> String {
    let mut s = header("TDX", release);
    s.push_str("[tdx]\n");
    match &r.mrtd {
        Reference::Value(v, p) => s.push_str(&format!("{}mrtd = [\"{v}\"]\n", note(p))),
        Reference::Skip(why) => {
            s.push_str(&format!("# {}\nmrtd = \"skip\"\n", why.replace('\n', " ")))
        }
    }
    for (i, x) in r.rtmr.iter().enumerate() {
        match x {
            Reference::Value(v, p) => s.push_str(&format!("{}rtmr{i} = \"{v}\"\n", note(p))),
            Reference::Skip(why) => s.push_str(&format!(
                "# {}\nrtmr{i} = \"skip\"\n",
                why.replace('\n', " ")
            )),
        }
    }
    s.push_str(
        "mrconfigid = \"skip\"\nmrowner = \"skip\"\nmrownerconfig = \"skip\"\ntd_attributes = \"skip\"\nxfam = \"skip\"\nmin_tee_tcb_svn = \"skip\"\nreport_data = \"skip\"\nallowed_tcb_statuses = [\"UpToDate\"]\nmax_collateral_age_days = \"skip\"\nallow_debug = false\n",
    );
    s
}
