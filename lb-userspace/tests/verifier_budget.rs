//! The verifier's work per program, against the record in `lb-ebpf/verifier-budget.txt`.
//!
//! Every program of the agent's eBPF object is loaded (maps unpinned and small, nothing
//! attached) and the kernel's `verified_insns` read back; the TC programs a second time
//! with Maglev on (a table size in their read-only global: the verifier walks the
//! table lookup only then), recorded as `<program>@maglev`. A program that grew by more
//! than [`GROWTH_PERCENT`] over its record fails the test, as does one without a
//! record: the verifier's limit (1M instructions, and the complexity that comes with
//! them) is a cliff that a data path change should only approach on purpose. After an
//! intended change, rewrite the record and commit it with the change:
//!
//! ```text
//! SOCKLB_VERIFIER_BLESS=1 cargo test -p socklb --test verifier_budget -- --nocapture
//! ```
//!
//! Needs root (loading programs): without it the test prints `SKIPPED: ...`, or fails
//! under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use aya::{
    Btf, EbpfLoader,
    programs::{CgroupSock, CgroupSockAddr, Iter, Program, SchedClassifier},
};
use lb_common::map_names;

/// Growth over the record that fails the test.
const GROWTH_PERCENT: u64 = 10;

fn record_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf/verifier-budget.txt")
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        .unwrap_or(false)
}

/// `program name -> verified instructions` from the record (comments and blank lines
/// skipped).
fn read_record(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, n) = l
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| panic!("record line {l:?}: want `program count`"));
            (name.to_string(), n.trim().parse().expect("a count"))
        })
        .collect()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Loads every program of the object (with its kfunc calls patched, as the agent
/// loads it) and returns its verified instruction count; with `maglev_table_size`,
/// the TC programs only, named `<program>@maglev`.
fn verified_counts(maglev_table_size: Option<u32>) -> Result<BTreeMap<String, u64>, String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("the kernel's BTF: {e}"))?;
    let object = socklb::datapath::kernel::loadable_object(Some(&btf))
        .map_err(|e| format!("patching the object: {e}"))?;
    let mut loader = EbpfLoader::new();
    if let Some(m) = &maglev_table_size {
        loader.override_global("MAGLEV_TABLE_SIZE", m, true);
    }
    // The verifier does not care how big a hash map is; the machine's memory does.
    for name in map_names::ALL {
        if ![
            map_names::STATS,
            map_names::AGENT_STATUS,
            map_names::SOCK_STATE4,
            map_names::SOCK_STATE6,
        ]
        .contains(&name)
            && !name.contains("rej_rate")
        {
            loader.map_max_entries(name, 64);
        }
    }
    let mut ebpf = loader
        .btf(Some(&btf))
        .load(object.bytes())
        .map_err(|e| format!("loading the object: {e}"))?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    let mut out = BTreeMap::new();
    for name in names {
        let program = ebpf.program_mut(&name).expect("listed");
        if maglev_table_size.is_some() && !matches!(program, Program::SchedClassifier(_)) {
            continue;
        }
        let info = match program {
            Program::CgroupSockAddr(p) => {
                load_and_info(p, CgroupSockAddr::load, CgroupSockAddr::info)
            }
            Program::CgroupSock(p) => load_and_info(p, CgroupSock::load, CgroupSock::info),
            Program::SchedClassifier(p) => {
                load_and_info(p, SchedClassifier::load, SchedClassifier::info)
            }
            // Socket iterators: iter/udp, iter/tcp.
            Program::Iter(p) => {
                let target = if name.contains("tcp") { "tcp" } else { "udp" };
                load_and_info(p, |p| p.load(target, &btf), Iter::info)
            }
            other => {
                return Err(format!(
                    "program {name}: type {:?} is not handled here yet: add it",
                    other.prog_type()
                ));
            }
        }
        .map_err(|e| format!("program {name}: {e}"))?;
        let n = info.ok_or_else(|| format!("{name}: the kernel does not report verified_insns"))?;
        let name = match maglev_table_size {
            Some(_) => format!("{name}@maglev"),
            None => name,
        };
        out.insert(name, u64::from(n));
    }
    Ok(out)
}

fn load_and_info<P>(
    program: &mut P,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
    info: impl FnOnce(&P) -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) -> Result<Option<u32>, String> {
    load(program).map_err(|e| format!("load: {e:#?}"))?;
    let info = info(program).map_err(|e| format!("info: {e}"))?;
    Ok(info.verified_instruction_count())
}

#[test]
fn verified_instructions_stay_within_the_record() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let why = "loading eBPF programs needs root";
        if in_ci() {
            panic!("verifier budget cannot run under CI=true: {why}");
        }
        let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
        return;
    }
    let mut counts = verified_counts(None).unwrap_or_else(|e| panic!("{e}"));
    counts.extend(
        verified_counts(Some(lb_common::maglev::DEFAULT_TABLE_SIZE))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let kernel = kernel_release();
    if std::env::var_os("SOCKLB_VERIFIER_BLESS").is_some() {
        let mut text = format!(
            "# Instructions the kernel's verifier processed per program (verified_insns),\n\
             # measured on Linux {kernel}. lb-userspace/tests/verifier_budget.rs fails when a\n\
             # program exceeds its count by more than {GROWTH_PERCENT}%; after an intended change:\n\
             # SOCKLB_VERIFIER_BLESS=1 cargo test -p socklb --test verifier_budget\n"
        );
        for (name, n) in &counts {
            text.push_str(&format!("{name} {n}\n"));
        }
        std::fs::write(record_path(), text).unwrap();
        eprintln!("rewrote {}", record_path().display());
        return;
    }
    let record_text = std::fs::read_to_string(record_path())
        .unwrap_or_else(|e| panic!("{}: {e}", record_path().display()));
    let record = read_record(&record_text);
    let mut problems = Vec::new();
    for (name, n) in &counts {
        match record.get(name) {
            None => problems.push(format!("{name}: {n} instructions, no record")),
            Some(&was) => {
                let pct = n * 100 / was.max(1);
                eprintln!("{name}: {n} verified instructions ({pct}% of the record, {was})");
                if n * 100 > was * (100 + GROWTH_PERCENT) {
                    problems.push(format!(
                        "{name}: {n} instructions, {pct}% of its record {was} (limit {}%)",
                        100 + GROWTH_PERCENT
                    ));
                }
            }
        }
    }
    for name in record.keys().filter(|n| !counts.contains_key(*n)) {
        problems.push(format!("{name}: in the record but not in the object"));
    }
    assert!(
        problems.is_empty(),
        "verifier budget (Linux {kernel}):\n  {}\nIf the growth is intended, rewrite the record: \
         SOCKLB_VERIFIER_BLESS=1 cargo test -p socklb --test verifier_budget",
        problems.join("\n  ")
    );
}

#[test]
fn the_record_parses_and_names_programs_once() {
    let text = std::fs::read_to_string(record_path()).unwrap();
    let record = read_record(&text);
    assert!(!record.is_empty());
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(lines, record.len(), "a program is named twice");
}
