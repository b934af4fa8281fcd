//! Turns calls to kernel functions (kfuncs) in the eBPF object into kfunc calls, before
//! aya loads it.
//!
//! The kernel programs declare a kfunc as `extern "C"` (lb-ebpf `stale.rs`:
//! `bpf_sock_destroy`). bpf-linker 0.13 emits such a call as a BPF-to-BPF call
//! (`src_reg = BPF_PSEUDO_CALL`, `imm = -1`) with a relocation against an undefined
//! symbol, and no BTF for it; aya 0.14 has no kfunc support and fails the whole object
//! on it ("error relocating function ... UnknownFunction"). So the loader patches the
//! bytes first: every call whose relocation names an undefined symbol becomes
//! `src_reg = BPF_PSEUDO_KFUNC_CALL`, `off = 0` (vmlinux, not a module) and `imm` = the
//! BTF id of `FUNC <name>` in the running kernel's BTF. aya then no longer sees a
//! pseudo call there and leaves the instruction alone; the verifier resolves it.
//!
//! A kfunc the kernel does not have (older kernels, or no BTF at all) becomes
//! `r0 = -EOPNOTSUPP` instead: the object still loads, so every other program works,
//! and the caller knows not to load the programs that need it ([`PatchedObject::missing`]).
//! Module kfuncs (which need an fd array) are not supported; none is used.
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

/// `BPF_JMP | BPF_CALL`.
const OP_CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
const OP_MOV64_IMM: u8 = 0xb7;
/// Call kinds in the `src_reg` half of the registers byte.
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const EOPNOTSUPP: i32 = 95;

/// One kfunc call site of the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KfuncCall {
    /// The kfunc (`bpf_sock_destroy`).
    pub name: String,
    /// The section (program) it is called from (`iter/udp`).
    pub section: String,
    /// Byte offset of the call instruction in that section.
    pub offset: u64,
    /// Its BTF id in the running kernel; None: missing, the call returns -EOPNOTSUPP.
    pub btf_id: Option<u32>,
}

/// The object with its kfunc calls patched, 8-byte aligned as aya's ELF parser wants.
pub struct PatchedObject {
    words: Vec<u64>,
    len: usize,
    /// Every call that was patched.
    pub calls: Vec<KfuncCall>,
}

impl PatchedObject {
    /// The patched object.
    pub fn bytes(&self) -> &[u8] {
        let bytes: &[u8] = bytemuck_words(&self.words);
        &bytes[..self.len]
    }

    /// Kfuncs the kernel lacks (each name once), for the sections that call them.
    pub fn missing(&self) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = self
            .calls
            .iter()
            .filter(|c| c.btf_id.is_none())
            .map(|c| (c.name.as_str(), c.section.as_str()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether `section`'s program calls only kfuncs the kernel has.
    pub fn section_resolved(&self, section: &str) -> bool {
        self.calls
            .iter()
            .filter(|c| c.section == section)
            .all(|c| c.btf_id.is_some())
    }
}

fn bytemuck_words(words: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and any byte of it is a valid u8; the length is the
    // slice's size in bytes, and u8 needs no alignment.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), std::mem::size_of_val(words)) }
}

fn bytemuck_words_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern is a valid u64, so writes cannot break it.
    unsafe {
        std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), std::mem::size_of_val(words))
    }
}

/// Why the object could not be patched (a build problem, not a kernel one).
#[derive(Debug, thiserror::Error)]
pub enum KfuncPatchError {
    #[error("the eBPF object is not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error(
        "a relocation against the undefined symbol {name} at {section}+{offset:#x} is not \
         a call (only extern functions, kfuncs, may stay undefined)"
    )]
    NotACall {
        name: String,
        section: String,
        offset: u64,
    },
    #[error("a relocation at {section}+{offset:#x} lies outside the file")]
    OutOfRange { section: String, offset: u64 },
}

/// Patches every call to an undefined symbol in `object` into a kfunc call, with the
/// BTF id `resolve` gives for the name, or into `r0 = -EOPNOTSUPP` when it gives none.
pub fn patch_kfunc_calls(
    object: &[u8],
    resolve: impl Fn(&str) -> Option<u32>,
) -> Result<PatchedObject, KfuncPatchError> {
    let file = object::File::parse(object)?;
    let mut words = vec![0u64; object.len().div_ceil(8)];
    bytemuck_words_mut(&mut words)[..object.len()].copy_from_slice(object);
    let mut calls = Vec::new();
    {
        let out = bytemuck_words_mut(&mut words);
        for section in file.sections() {
            let Some((file_offset, _)) = section.file_range() else {
                continue;
            };
            let section_name = section.name().unwrap_or("?").to_string();
            for (offset, relocation) in section.relocations() {
                let RelocationTarget::Symbol(index) = relocation.target() else {
                    continue;
                };
                let symbol = file.symbol_by_index(index)?;
                if !symbol.is_undefined() {
                    continue;
                }
                let name = symbol.name()?.to_string();
                let at = file_offset
                    .checked_add(offset)
                    .and_then(|a| usize::try_from(a).ok())
                    .filter(|a| a.checked_add(8).is_some_and(|end| end <= object.len()))
                    .ok_or_else(|| KfuncPatchError::OutOfRange {
                        section: section_name.clone(),
                        offset,
                    })?;
                let insn = &mut out[at..at + 8];
                if insn[0] != OP_CALL || insn[1] >> 4 != BPF_PSEUDO_CALL {
                    return Err(KfuncPatchError::NotACall {
                        name,
                        section: section_name,
                        offset,
                    });
                }
                let btf_id = resolve(&name);
                match btf_id {
                    Some(id) => {
                        insn[1] = BPF_PSEUDO_KFUNC_CALL << 4; // dst_reg 0
                        insn[2..4].copy_from_slice(&0i16.to_le_bytes()); // vmlinux BTF
                        insn[4..8].copy_from_slice(&id.to_le_bytes());
                    }
                    None => {
                        insn[0] = OP_MOV64_IMM;
                        insn[1] = 0; // dst_reg r0
                        insn[2..4].copy_from_slice(&0i16.to_le_bytes());
                        insn[4..8].copy_from_slice(&(-EOPNOTSUPP).to_le_bytes());
                    }
                }
                calls.push(KfuncCall {
                    name,
                    section: section_name.clone(),
                    offset,
                    btf_id,
                });
            }
        }
    }
    Ok(PatchedObject {
        words,
        len: object.len(),
        calls,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::datapath::kernel::EBPF_OBJECT;

    /// Relocates the object's calls as `EbpfLoader::load` does (without a kernel).
    fn relocate_calls(bytes: &[u8]) -> Result<(), String> {
        let mut obj = aya_obj::Object::parse(bytes).map_err(|e| e.to_string())?;
        let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_calls(&text).map_err(|e| e.to_string())
    }

    fn insn_at(p: &PatchedObject, call: &KfuncCall) -> [u8; 8] {
        let file = object::File::parse(p.bytes()).unwrap();
        let section = file.section_by_name(&call.section).unwrap();
        let (start, _) = section.file_range().unwrap();
        let at = (start + call.offset) as usize;
        p.bytes()[at..at + 8].try_into().unwrap()
    }

    #[test]
    fn the_real_object_needs_the_patch_and_loads_with_it() {
        assert!(
            relocate_calls(EBPF_OBJECT).is_err(),
            "aya 0.14 cannot relocate the unpatched kfunc call; if it can, drop the patch"
        );
        let p = patch_kfunc_calls(EBPF_OBJECT, |name| {
            (name == "bpf_sock_destroy").then_some(4242)
        })
        .unwrap();
        let mut sections: Vec<&str> = p.calls.iter().map(|c| c.section.as_str()).collect();
        sections.sort_unstable();
        assert_eq!(sections, ["iter/tcp", "iter/udp"], "{:?}", p.calls);
        for call in &p.calls {
            assert_eq!(call.name, "bpf_sock_destroy");
            let insn = insn_at(&p, call);
            assert_eq!(insn[..4], [OP_CALL, 0x20, 0, 0], "{call:?}");
            assert_eq!(i32::from_le_bytes(insn[4..].try_into().unwrap()), 4242);
        }
        assert!(p.missing().is_empty());
        assert!(p.section_resolved("iter/udp"));
        assert_eq!(p.bytes().len(), EBPF_OBJECT.len());
        assert_eq!(p.bytes().as_ptr() as usize % 8, 0);
        relocate_calls(p.bytes()).unwrap();
        // Nothing but the call sites changed.
        let changed = p
            .bytes()
            .iter()
            .zip(EBPF_OBJECT)
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed <= 2 * 8, "{changed} bytes changed");
    }

    #[test]
    fn a_kernel_without_the_kfunc_gets_eopnotsupp_and_the_object_still_loads() {
        let p = patch_kfunc_calls(EBPF_OBJECT, |_| None).unwrap();
        assert_eq!(
            p.missing(),
            [
                ("bpf_sock_destroy", "iter/tcp"),
                ("bpf_sock_destroy", "iter/udp")
            ]
        );
        assert!(!p.section_resolved("iter/udp"));
        assert!(p.section_resolved("cgroup/connect4"));
        for call in &p.calls {
            let insn = insn_at(&p, call);
            assert_eq!(insn[..4], [OP_MOV64_IMM, 0, 0, 0]);
            assert_eq!(i32::from_le_bytes(insn[4..].try_into().unwrap()), -95);
        }
        relocate_calls(p.bytes()).unwrap();
    }

    /// A minimal ELF64 relocatable for the BPF machine: `.text` with `code`, a symbol
    /// table with `extern_fn` undefined, and one REL entry at `reloc_offset` against it.
    fn synthetic_elf(code: &[u8], reloc_offset: u64) -> Vec<u8> {
        let shstrtab = b"\0.text\0.symtab\0.strtab\0.rel.text\0.shstrtab\0";
        let name = |s: &str| {
            let needle = format!("{s}\0");
            shstrtab
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
        };
        let strtab = b"\0ext_fn\0";
        let mut symtab = vec![0u8; 24]; // the null symbol
        symtab.extend(1u32.to_le_bytes()); // st_name "ext_fn"
        symtab.push(0x10); // STB_GLOBAL, STT_NOTYPE
        symtab.push(0);
        symtab.extend(0u16.to_le_bytes()); // SHN_UNDEF
        symtab.extend([0u8; 16]);
        let mut rel = Vec::new();
        rel.extend(reloc_offset.to_le_bytes());
        rel.extend(((1u64 << 32) | 10).to_le_bytes()); // symbol 1, R_BPF_64_32
        let mut out = vec![0u8; 64];
        let place = |data: &[u8], out: &mut Vec<u8>| {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            let at = out.len() as u64;
            out.extend_from_slice(data);
            (at, data.len() as u64)
        };
        let text = place(code, &mut out);
        let sym = place(&symtab, &mut out);
        let str_ = place(strtab, &mut out);
        let rel_ = place(&rel, &mut out);
        let shs = place(shstrtab, &mut out);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        // (name, type, flags, (offset, size), link, info, align, entsize)
        type Header = (u32, u32, u64, (u64, u64), u32, u32, u64, u64);
        let headers: [Header; 6] = [
            (0, 0, 0, (0, 0), 0, 0, 0, 0),
            (name(".text"), 1, 0x6, text, 0, 0, 8, 0),
            (name(".symtab"), 2, 0, sym, 3, 1, 8, 24),
            (name(".strtab"), 3, 0, str_, 0, 0, 1, 0),
            (name(".rel.text"), 9, 0, rel_, 2, 1, 8, 16),
            (name(".shstrtab"), 3, 0, shs, 0, 0, 1, 0),
        ];
        for (n, t, f, (o, s), l, i, a, e) in headers {
            out.extend(n.to_le_bytes());
            out.extend(t.to_le_bytes());
            out.extend(f.to_le_bytes());
            out.extend(0u64.to_le_bytes()); // sh_addr
            out.extend(o.to_le_bytes());
            out.extend(s.to_le_bytes());
            out.extend(l.to_le_bytes());
            out.extend(i.to_le_bytes());
            out.extend(a.to_le_bytes());
            out.extend(e.to_le_bytes());
        }
        let header = &mut out[..64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2; // ELFCLASS64
        header[5] = 1; // little endian
        header[6] = 1; // EV_CURRENT
        header[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        header[18..20].copy_from_slice(&247u16.to_le_bytes()); // EM_BPF
        header[20..24].copy_from_slice(&1u32.to_le_bytes());
        header[40..48].copy_from_slice(&shoff.to_le_bytes());
        header[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        header[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        header[60..62].copy_from_slice(&6u16.to_le_bytes()); // e_shnum
        header[62..64].copy_from_slice(&5u16.to_le_bytes()); // e_shstrndx
        out
    }

    /// r1 = 0; call -1 (pseudo call to the extern); exit.
    const CODE: [u8; 24] = [
        0xb7, 0x01, 0, 0, 0, 0, 0, 0, //
        0x85, 0x10, 0, 0, 0xff, 0xff, 0xff, 0xff, //
        0x95, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn a_synthetic_object_gets_its_call_patched_and_nothing_else() {
        let elf = synthetic_elf(&CODE, 8);
        let p = patch_kfunc_calls(&elf, |n| (n == "ext_fn").then_some(77)).unwrap();
        assert_eq!(
            p.calls,
            [KfuncCall {
                name: "ext_fn".into(),
                section: ".text".into(),
                offset: 8,
                btf_id: Some(77)
            }]
        );
        let insn = insn_at(&p, &p.calls[0]);
        assert_eq!(insn, [0x85, 0x20, 0, 0, 77, 0, 0, 0]);
        let diff: Vec<usize> = (0..elf.len())
            .filter(|i| elf[*i] != p.bytes()[*i])
            .collect();
        assert_eq!(
            diff.len(),
            5,
            "src_reg and the four imm bytes, and no more: {diff:?}"
        );
    }

    #[test]
    fn a_relocation_on_something_else_than_a_call_is_refused() {
        // The relocation points at `r1 = 0`, not at the call.
        let elf = synthetic_elf(&CODE, 0);
        let e = patch_kfunc_calls(&elf, |_| Some(1)).err().unwrap();
        assert!(
            matches!(e, KfuncPatchError::NotACall { ref name, .. } if name == "ext_fn"),
            "{e}"
        );
        let elf = synthetic_elf(&CODE, 4096);
        assert!(matches!(
            patch_kfunc_calls(&elf, |_| Some(1)),
            Err(KfuncPatchError::OutOfRange { .. })
        ));
        assert!(matches!(
            patch_kfunc_calls(b"not an elf", |_| Some(1)),
            Err(KfuncPatchError::Elf(_))
        ));
    }
}
