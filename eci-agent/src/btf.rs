//! A small reader of the kernel's BTF, used for one thing: the byte offsets
//! of the few struct fields the BPF programs read.
//!
//! Struct layouts change between kernels (`file.f_inode` moved by 8 bytes
//! between 6.1 and 6.12), and Rust BPF has no CO-RE relocations, so offsets
//! are looked up in `/sys/kernel/btf/vmlinux` of the running kernel at load
//! time instead of being compiled in.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use eci_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read the kernel's BTF at {path}: {source}; eci needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {member} in struct {strukt}")]
    NoMember { strukt: String, member: String },
    #[error("struct {strukt}.{member} is a bitfield or not byte aligned")]
    Unaligned { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, Clone)]
struct Member {
    /// Offset of its name in the string section (empty: anonymous).
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// struct or union
    Composite {
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: refers to another type
    Alias(u32),
    Other,
}

/// The parsed type section (type id 0 is `void`). Names stay offsets into
/// the string section, read when asked: a kernel's BTF has hundreds of
/// thousands of member and parameter names, and eci asks for a few dozen.
pub struct Btf {
    /// The string section.
    strings: Vec<u8>,
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
    /// Names of the functions and typedefs that tell which attach points
    /// this kernel has: `bpf_lsm_<hook>` (a BPF-LSM hook) and
    /// `btf_trace_<tracepoint>` (a tracepoint BTF programs can attach to).
    attach_points: HashSet<String>,
    /// `bpf_lsm_<hook>` -> the type id of its prototype.
    lsm_protos: HashMap<String, u32>,
    /// Prototype type id -> its parameters' name offsets.
    proto_params: HashMap<u32, Vec<u32>>,
}

/// The NUL-terminated name at `off` of a string section ("" when out of it).
fn name_in(strings: &[u8], off: u32) -> &[u8] {
    let Some(rest) = strings.get(off as usize..) else {
        return &[];
    };
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    &rest[..end]
}

/// Prefixes of the names kept in `Btf::attach_points`.
const LSM_PREFIX: &str = "bpf_lsm_";
const TRACEPOINT_PREFIX: &str = "btf_trace_";
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        let bytes = self
            .data
            .get(at..at + 4)
            .ok_or(BtfError::Malformed("truncated"))?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

fn keep_attach_point(points: &mut HashSet<String>, name: &[u8], prefix: &str) {
    if name.starts_with(prefix.as_bytes()) {
        points.insert(String::from_utf8_lossy(name).into_owned());
    }
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let r = Reader { data };
        let magic = data.get(0..2).ok_or(BtfError::Malformed("no header"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = r.u32_at(4)? as usize;
        let type_off = r.u32_at(8)? as usize;
        let type_len = r.u32_at(12)? as usize;
        let str_off = r.u32_at(16)? as usize;
        let str_len = r.u32_at(20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        if types_end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let name_at = |off: u32| name_in(strings, off);

        let mut types = vec![Type::Other];
        let mut structs_by_name = HashMap::new();
        let mut attach_points = HashSet::new();
        let mut lsm_protos = HashMap::new();
        let mut proto_params = HashMap::new();
        let mut at = types_start;
        while at < types_end {
            let name_off = r.u32_at(at)?;
            let info = r.u32_at(at + 4)?;
            let size_or_type = r.u32_at(at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let id = types.len() as u32;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = r.u32_at(m + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0xff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        members.push(Member {
                            name: r.u32_at(m)?,
                            type_id: r.u32_at(m + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    at += vlen * 12;
                    let name = name_at(name_off);
                    if kind == KIND_STRUCT && !name.is_empty() {
                        structs_by_name
                            .entry(String::from_utf8_lossy(name).into_owned())
                            .or_insert(id);
                    }
                    Type::Composite { members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    if kind == KIND_TYPEDEF {
                        keep_attach_point(&mut attach_points, name_at(name_off), TRACEPOINT_PREFIX);
                    }
                    Type::Alias(size_or_type)
                }
                _ => {
                    if kind == KIND_FUNC {
                        let name = name_at(name_off);
                        if name.starts_with(LSM_PREFIX.as_bytes()) {
                            lsm_protos
                                .insert(String::from_utf8_lossy(name).into_owned(), size_or_type);
                        }
                        keep_attach_point(&mut attach_points, name, LSM_PREFIX);
                    }
                    if kind == KIND_FUNC_PROTO {
                        let mut names = Vec::with_capacity(vlen);
                        for i in 0..vlen {
                            names.push(r.u32_at(at + i * 8)?);
                        }
                        proto_params.insert(id, names);
                    }
                    at += match kind {
                        1 | 14 | 17 => 4,     // int, var, decl tag
                        3 => 12,              // array
                        6 => vlen * 8,        // enum
                        13 => vlen * 8,       // func proto
                        15 | 19 => vlen * 12, // datasec, enum64
                        2 | 7 | 12 | 16 => 0, // ptr, fwd, func, float
                        _ => return Err(BtfError::Malformed("unknown type kind")),
                    };
                    Type::Other
                }
            };
            types.push(ty);
        }
        Ok(Self {
            strings: strings.to_vec(),
            types,
            structs_by_name,
            attach_points,
            lsm_protos,
            proto_params,
        })
    }

    /// Whether BPF-LSM programs can attach to `hook` (`bpf_lsm_<hook>`).
    pub fn has_lsm_hook(&self, hook: &str) -> bool {
        self.attach_points.contains(&format!("{LSM_PREFIX}{hook}"))
    }

    /// The position of the parameter named `param` among an LSM hook's
    /// arguments (hooks gained an ID-mapping argument in front over the
    /// kernels: `inode_setxattr(dentry, ...)` on 5.10, `(mnt_userns,
    /// dentry, ...)` from 5.12, `(idmap, dentry, ...)` from 6.3).
    pub fn lsm_hook_param(&self, hook: &str, param: &str) -> Option<u32> {
        let proto = self.lsm_protos.get(&format!("{LSM_PREFIX}{hook}"))?;
        let params = self.proto_params.get(proto)?;
        params
            .iter()
            .position(|&p| name_in(&self.strings, p) == param.as_bytes())
            .map(|i| i as u32)
    }

    /// Whether BTF tracepoint programs can attach to `tracepoint`
    /// (`btf_trace_<tracepoint>`).
    pub fn has_btf_tracepoint(&self, tracepoint: &str) -> bool {
        self.attach_points
            .contains(&format!("{TRACEPOINT_PREFIX}{tracepoint}"))
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                other => return Some(other),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous
    /// structs and unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let ty = self
            .types
            .get(id as usize)
            .ok_or(BtfError::Malformed("bad struct id"))?;
        let bits = self
            .find_member(ty, member, 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })?;
        match bits {
            (bit_offset, 0) if bit_offset % 8 == 0 => Ok(bit_offset / 8),
            _ => Err(BtfError::Unaligned {
                strukt: strukt.into(),
                member: member.into(),
            }),
        }
    }

    fn find_member(&self, ty: &Type, member: &str, base_bits: u32) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = ty else {
            return None;
        };
        for m in members {
            if name_in(&self.strings, m.name) == member.as_bytes() {
                return Some((base_bits + m.bit_offset, m.bitfield_size));
            }
        }
        // Anonymous struct/union members are searched after named ones.
        for m in members
            .iter()
            .filter(|m| name_in(&self.strings, m.name).is_empty())
        {
            if let Some(inner @ Type::Composite { .. }) = self.resolve(m.type_id)
                && let Some(found) = self.find_member(inner, member, base_bits + m.bit_offset)
            {
                return Some(found);
            }
        }
        None
    }

    /// Whether this kernel has cgroup local storage for BPF (Linux 6.2+:
    /// `struct cgroup` carries `bpf_cgrp_storage`), so a map of that type
    /// can be made here.
    pub fn has_cgroup_storage(&self) -> bool {
        self.member_offset("cgroup", "bpf_cgrp_storage").is_ok()
    }

    /// The offsets the BPF programs need, from this kernel's layouts.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            unix_sock_path: self.member_offset("unix_sock", "path")?,
            path_dentry: self.member_offset("path", "dentry")?,
            dentry_inode: self.member_offset("dentry", "d_inode")?,
            inode_ino: self.member_offset("inode", "i_ino")?,
            inode_sb: self.member_offset("inode", "i_sb")?,
            super_block_dev: self.member_offset("super_block", "s_dev")?,
            socket_sk: self.member_offset("socket", "sk")?,
            file_inode: self.member_offset("file", "f_inode")?,
            super_block_magic: self.member_offset("super_block", "s_magic")?,
            super_block_bdev: self.member_offset("super_block", "s_bdev")?,
            task_nsproxy: self.member_offset("task_struct", "nsproxy")?,
            nsproxy_ns: [
                self.member_offset("nsproxy", "uts_ns")?,
                self.member_offset("nsproxy", "ipc_ns")?,
                self.member_offset("nsproxy", "mnt_ns")?,
                self.member_offset("nsproxy", "pid_ns_for_children")?,
                self.member_offset("nsproxy", "net_ns")?,
            ],
            ns_common: [
                self.member_offset("uts_namespace", "ns")?,
                self.member_offset("ipc_namespace", "ns")?,
                self.member_offset("mnt_namespace", "ns")?,
                self.member_offset("pid_namespace", "ns")?,
                self.member_offset("net", "ns")?,
            ],
            ns_common_inum: self.member_offset("ns_common", "inum")?,
            path_mnt: self.member_offset("path", "mnt")?,
            vfsmount_sb: self.member_offset("vfsmount", "mnt_sb")?,
            vfsmount_flags: self.member_offset("vfsmount", "mnt_flags")?,
            mount_mnt: self.member_offset("mount", "mnt")?,
            mount_id: self.member_offset("mount", "mnt_id")?,
            inode_mode: self.member_offset("inode", "i_mode")?,
            inode_rdev: self.member_offset("inode", "i_rdev")?,
            inode_uid: self.member_offset("inode", "i_uid")?,
            inode_gid: self.member_offset("inode", "i_gid")?,
            file_mode: self.member_offset("file", "f_mode")?,
            file_path: self.member_offset("file", "f_path")?,
            dentry_parent: self.member_offset("dentry", "d_parent")?,
            task_cred: self.member_offset("task_struct", "cred")?,
            cred_user_ns: self.member_offset("cred", "user_ns")?,
            user_ns_common: self.member_offset("user_namespace", "ns")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            cgroup_self: self.member_offset("cgroup", "self")?,
            css_parent: self.member_offset("cgroup_subsys_state", "parent")?,
            cgroup_root: self.member_offset("cgroup", "root")?,
            cgroup_root_hierarchy_id: self.member_offset("cgroup_root", "hierarchy_id")?,
            kernfs_node_id: self.member_offset("kernfs_node", "id")?,
            task_cgroups: self.member_offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.member_offset("css_set", "dfl_cgrp")?,
            valid: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { long x; union { struct inner in; long y; }; int z; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0z\0long\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        // 1: int
        t.extend([s("int"), 1 << 24, 4, 32]);
        // 2: long
        t.extend([s("long"), 1 << 24, 8, 64]);
        // 3: struct inner { int a; int b; }
        t.extend([s("inner"), (4 << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]);
        // 4: anonymous union { struct inner in; long y; }
        t.extend([0, (5 << 24) | 2, 8, s("in"), 3, 0, s("y"), 2, 0]);
        // 5: typedef of the union (to exercise alias resolution)
        t.extend([0, 8 << 24, 4]);
        // 6: struct outer { long x; <anon> via typedef at 64; int z at 128 }
        t.extend([
            s("outer"),
            (4 << 24) | 3,
            24,
            s("x"),
            2,
            0,
            0,
            5,
            64,
            s("z"),
            1,
            128,
        ]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(0xeb9fu16.to_le_bytes());
        blob.extend([1u8, 0]);
        blob.extend(24u32.to_le_bytes());
        blob.extend(0u32.to_le_bytes());
        blob.extend((types.len() as u32).to_le_bytes());
        blob.extend((types.len() as u32).to_le_bytes());
        blob.extend((strings.len() as u32).to_le_bytes());
        blob.extend(types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "z").unwrap(), 16);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in").unwrap(), 8);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
    }

    #[test]
    fn missing_struct_and_member_are_named() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = btf.member_offset("nosuch", "x").unwrap_err().to_string();
        assert!(err.contains("struct nosuch"), "{err}");
        let err = btf
            .member_offset("outer", "nosuch")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuch") && err.contains("outer"), "{err}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, definitely not").is_err());
        assert!(Btf::parse(&[]).is_err());
    }

    #[test]
    fn running_kernel_has_every_offset_eci_needs() {
        if !Path::new(VMLINUX_BTF).exists() {
            println!("SKIP: {VMLINUX_BTF} does not exist on this kernel");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        let offsets = btf.kernel_offsets().unwrap();
        assert_eq!(offsets.valid, 1);
        // `struct path` is { vfsmount *mnt; dentry *dentry; } on every kernel.
        assert_eq!(offsets.path_dentry, 8);
        assert!(btf.has_lsm_hook("file_open"));
        assert!(
            btf.lsm_hook_param("inode_setxattr", "dentry")
                .is_some_and(|i| i <= 1)
        );
        assert!(btf.has_btf_tracepoint("cgroup_mkdir"));
        assert!(!btf.has_lsm_hook("no_such_hook"));
    }
}
