//! VMware guestinfo through the backdoor: GuestRPC ("RPCI") over I/O port 0x5658, the
//! low-bandwidth variant (4 bytes per `in`). `info-get KEY` reads the VM's extraConfig;
//! `info-set KEY VALUE` writes read-write (`guestinfo.vice..`) keys back for the appliance.

use std::io;

const MAGIC: u32 = 0x564D_5868; // "VMXh"
const PORT: u32 = 0x5658;
const CMD_MESSAGE: u32 = 0x1E;
const RPCI_PROTOCOL: u32 = 0x4943_5052; // "RPCI"
const FLAG_COOKIE: u32 = 0x8000_0000;

const TYPE_OPEN: u32 = 0;
const TYPE_SEND_SIZE: u32 = 1;
const TYPE_SEND_PAYLOAD: u32 = 2;
const TYPE_RECV_SIZE: u32 = 3;
const TYPE_RECV_PAYLOAD: u32 = 4;
const TYPE_RECV_STATUS: u32 = 5;
const TYPE_CLOSE: u32 = 6;

const STATUS_SUCCESS: u32 = 0x0001;
const STATUS_DORECV: u32 = 0x0002;

/// The registers of one backdoor call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub esi: u32,
    pub edi: u32,
}

/// One `in eax, dx` on the backdoor port. The real one needs I/O privilege (ioperm).
pub trait Backdoor {
    fn call(&mut self, regs: &mut Regs);
}

/// The hardware backdoor.
pub struct Port;

impl Port {
    /// Grants this process access to the backdoor port. Only root (PID 1) may.
    pub fn open() -> io::Result<Self> {
        // SAFETY: ioperm changes only this process's I/O permission bitmap.
        if unsafe { libc::ioperm(PORT as libc::c_ulong, 1, 1) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Port)
    }
}

impl Backdoor for Port {
    fn call(&mut self, r: &mut Regs) {
        let mut rbx = r.ebx as u64;
        // SAFETY: the backdoor `in` reads and writes exactly these six registers. On a hypervisor
        // without the backdoor it faults (SIGSEGV); callers probe with a version query only on
        // x86 VMs that claim VMware (or QEMU's vmport). rbx is LLVM-reserved, hence the swap.
        unsafe {
            std::arch::asm!(
                "xchg rbx, {b}",
                "in eax, dx",
                "xchg rbx, {b}",
                b = inout(reg) rbx,
                inout("eax") r.eax,
                inout("ecx") r.ecx,
                inout("edx") r.edx,
                inout("esi") r.esi,
                inout("edi") r.edi,
            );
        }
        r.ebx = rbx as u32;
    }
}

const CMD_GET_VERSION: u32 = 0x0A;

/// True when a VMware backdoor answers (vSphere, or QEMU's vmport device).
pub fn present(bd: &mut impl Backdoor) -> bool {
    let mut r = Regs {
        eax: MAGIC,
        ebx: !MAGIC,
        ecx: CMD_GET_VERSION,
        edx: PORT,
        ..Default::default()
    };
    bd.call(&mut r);
    r.ebx == MAGIC
}

/// Why the spec could not be had from guestinfo.
#[derive(Debug, thiserror::Error)]
pub enum GuestinfoError {
    #[error("guestinfo: {0}")]
    Rpc(#[source] RpcError),
    #[error("guestinfo does not decode: {0}")]
    Decode(#[source] guestinfo::KeyError),
}

/// Who a container is (when that much decodes) and why its config failed, for the failure
/// report.
pub type ConfigFailure = (Option<(String, Vec<u8>)>, GuestinfoError);

/// Reads the container spec from guestinfo. `None` when there is no backdoor here at all.
pub fn load_spec() -> Option<Result<guestinfo::ContainerSpec, ConfigFailure>> {
    let mut port = Port::open().ok()?;
    if !present(&mut port) {
        return None;
    }
    let rpc = match Rpci::open(port) {
        Ok(r) => std::cell::RefCell::new(r),
        Err(e) => return Some(Err((None, GuestinfoError::Rpc(e)))),
    };
    let source = guestinfo::LookupSource(|k: &str| rpc.borrow_mut().info_get(k).ok().flatten());
    Some(guestinfo::spec::decode(&source).map_err(|e| {
        let r = guestinfo::KeyPath::read_only();
        use guestinfo::KeySource;
        let id = source.required(r.field("common").field("id").as_str()).ok();
        let secret = source
            .bytes(r.field("channel").field("secret").as_str())
            .ok()
            .flatten();
        (id.zip(secret), GuestinfoError::Decode(e))
    }))
}

/// Writes the container's state to guestinfo in one update (never torn across keys), if this
/// is a VMware VM.
pub fn write_status(container_id: &str, status: &str) {
    let key = guestinfo::KeyPath::read_write()
        .field("sessions")
        .entry(container_id)
        .field("status");
    info_set_all(&[(key.to_string(), status.to_string())].into());
}

/// Writes what each endpoint was assigned to guestinfo's read-write keys (VIC's `assigned`
/// fields), if this is a VMware VM: one `info-set` per key, so a reader may see one endpoint's
/// keys from before and after a renewal; each key on its own is whole.
pub fn write_network(endpoints: &[wire::EndpointStatus]) {
    info_set_all(&network_pairs(endpoints));
}

fn network_pairs(endpoints: &[wire::EndpointStatus]) -> std::collections::BTreeMap<String, String> {
    let mut w = guestinfo::KeyWriter::new();
    for e in endpoints {
        let assigned = guestinfo::network::Assigned {
            address: e.ipv4.first().cloned(),
            addresses6: e.ipv6.clone(),
            gateway: e.gateway.clone(),
            nameservers: e.nameservers.clone(),
        };
        guestinfo::network::encode_assigned(&mut w, &e.network, &assigned);
    }
    w.into_pairs()
}

fn info_set_all(pairs: &std::collections::BTreeMap<String, String>) {
    let Ok(mut port) = Port::open() else { return };
    if !present(&mut port) {
        return;
    }
    if let Ok(mut rpc) = Rpci::open(port) {
        for (key, value) in pairs {
            let _ = rpc.info_set(key, value);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("backdoor {0} failed (status {1:#06x})")]
    Step(&'static str, u32),
    #[error("reply of {0} bytes is larger than the 1 MiB limit")]
    TooLarge(u32),
}

/// An open RPCI channel.
pub struct Rpci<B: Backdoor> {
    bd: B,
    channel: u32,
    cookie: (u32, u32),
}

impl<B: Backdoor> Rpci<B> {
    fn regs(&self, kind: u32, ebx: u32) -> Regs {
        Regs {
            eax: MAGIC,
            ebx,
            ecx: (kind << 16) | CMD_MESSAGE,
            edx: (self.channel << 16) | PORT,
            esi: self.cookie.0,
            edi: self.cookie.1,
        }
    }

    fn step(&mut self, what: &'static str, kind: u32, ebx: u32) -> Result<Regs, RpcError> {
        let mut r = self.regs(kind, ebx);
        self.bd.call(&mut r);
        if (r.ecx >> 16) & STATUS_SUCCESS == 0 {
            return Err(RpcError::Step(what, r.ecx >> 16));
        }
        Ok(r)
    }

    pub fn open(bd: B) -> Result<Self, RpcError> {
        let mut rpc = Self {
            bd,
            channel: 0,
            cookie: (0, 0),
        };
        let r = rpc.step("open", TYPE_OPEN, RPCI_PROTOCOL | FLAG_COOKIE)?;
        rpc.channel = r.edx >> 16;
        rpc.cookie = (r.esi, r.edi);
        Ok(rpc)
    }

    /// Sends one command and returns the reply.
    pub fn call(&mut self, command: &[u8]) -> Result<Vec<u8>, RpcError> {
        self.step("send size", TYPE_SEND_SIZE, command.len() as u32)?;
        for chunk in command.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            self.step("send payload", TYPE_SEND_PAYLOAD, u32::from_le_bytes(word))?;
        }
        let r = self.step("receive size", TYPE_RECV_SIZE, 0)?;
        if (r.ecx >> 16) & STATUS_DORECV == 0 {
            return Ok(Vec::new());
        }
        let len = r.ebx;
        if len > 1 << 20 {
            return Err(RpcError::TooLarge(len));
        }
        let id = r.edx >> 16;
        let mut reply = Vec::with_capacity(len as usize + 3);
        while reply.len() < len as usize {
            let r = self.step("receive payload", TYPE_RECV_PAYLOAD, id)?;
            reply.extend_from_slice(&r.ebx.to_le_bytes());
        }
        reply.truncate(len as usize);
        self.step("receive status", TYPE_RECV_STATUS, id)?;
        Ok(reply)
    }

    /// `info-get key`: the value, or None when the VM has no such key.
    pub fn info_get(&mut self, key: &str) -> Result<Option<String>, RpcError> {
        let reply = self.call(format!("info-get {key}").as_bytes())?;
        Ok(reply
            .strip_prefix(b"1 ")
            .map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    /// `info-set key value`: true when the VM accepted it.
    pub fn info_set(&mut self, key: &str, value: &str) -> Result<bool, RpcError> {
        let reply = self.call(format!("info-set {key} {value}").as_bytes())?;
        Ok(reply.first() == Some(&b'1'))
    }
}

impl<B: Backdoor> Drop for Rpci<B> {
    fn drop(&mut self) {
        let _ = self.step("close", TYPE_CLOSE, 0);
    }
}

#[cfg(test)]
pub mod fake {
    //! The host side of the RPCI protocol, for tests: a VM's guestinfo in a map.
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct FakeVm {
        pub guestinfo: BTreeMap<String, String>,
        open: bool,
        inbox: Vec<u8>,
        expected: usize,
        outbox: Vec<u8>,
        read_at: usize,
        pub calls: usize,
    }

    impl FakeVm {
        fn reply(&mut self, command: &str) -> String {
            if let Some(key) = command.strip_prefix("info-get ") {
                return match self.guestinfo.get(key) {
                    Some(v) => format!("1 {v}"),
                    None => "0 No value found".into(),
                };
            }
            if let Some(rest) = command.strip_prefix("info-set ") {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                self.guestinfo.insert(k.to_string(), v.to_string());
                return "1 ".into();
            }
            "0 Unknown command".into()
        }
    }

    const COOKIE: (u32, u32) = (0x1234, 0x5678);
    const CHANNEL: u32 = 7;

    impl Backdoor for FakeVm {
        fn call(&mut self, r: &mut Regs) {
            self.calls += 1;
            assert_eq!(r.eax, MAGIC, "magic");
            assert_eq!(r.ecx & 0xFFFF, CMD_MESSAGE);
            assert_eq!(r.edx & 0xFFFF, PORT);
            let kind = r.ecx >> 16;
            let ok = |r: &mut Regs, extra: u32| r.ecx = (STATUS_SUCCESS | extra) << 16;
            if kind == TYPE_OPEN {
                assert_eq!(r.ebx, RPCI_PROTOCOL | FLAG_COOKIE);
                self.open = true;
                r.edx = CHANNEL << 16;
                (r.esi, r.edi) = COOKIE;
                return ok(r, 0);
            }
            if !self.open || r.edx >> 16 != CHANNEL || (r.esi, r.edi) != COOKIE {
                r.ecx = 0; // failure
                return;
            }
            match kind {
                _ if r.ecx & 0xFFFF == CMD_GET_VERSION => {}
                TYPE_SEND_SIZE => {
                    self.expected = r.ebx as usize;
                    self.inbox.clear();
                    ok(r, 0)
                }
                TYPE_SEND_PAYLOAD => {
                    self.inbox.extend_from_slice(&r.ebx.to_le_bytes());
                    if self.inbox.len() >= self.expected {
                        self.inbox.truncate(self.expected);
                        let cmd = String::from_utf8_lossy(&self.inbox).into_owned();
                        self.outbox = self.reply(&cmd).into_bytes();
                        self.read_at = 0;
                    }
                    ok(r, 0)
                }
                TYPE_RECV_SIZE => {
                    r.ebx = self.outbox.len() as u32;
                    r.edx = 3 << 16;
                    ok(r, STATUS_DORECV)
                }
                TYPE_RECV_PAYLOAD => {
                    let mut w = [0u8; 4];
                    for (i, b) in w.iter_mut().enumerate() {
                        *b = self.outbox.get(self.read_at + i).copied().unwrap_or(0);
                    }
                    self.read_at += 4;
                    r.ebx = u32::from_le_bytes(w);
                    ok(r, 0)
                }
                TYPE_RECV_STATUS | TYPE_CLOSE => ok(r, 0),
                _ => r.ecx = 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeVm;
    use super::*;

    #[test]
    fn info_get_and_set_round_trip_any_length() {
        let mut vm = FakeVm::default();
        vm.guestinfo
            .insert("guestinfo.vice./common/id".into(), "abc".into());
        vm.guestinfo.insert("k5".into(), "12345".into());
        let mut rpc = Rpci::open(vm).unwrap();
        assert_eq!(
            rpc.info_get("guestinfo.vice./common/id").unwrap(),
            Some("abc".into())
        );
        assert_eq!(rpc.info_get("k5").unwrap(), Some("12345".into()));
        assert_eq!(rpc.info_get("missing").unwrap(), None);
        assert!(rpc
            .info_set("guestinfo.vice..sessions|abc.status", "exited 0 | done")
            .unwrap());
        assert_eq!(
            rpc.info_get("guestinfo.vice..sessions|abc.status").unwrap(),
            Some("exited 0 | done".into())
        );
    }

    #[test]
    fn spec_decodes_through_the_backdoor() {
        let mut vm = FakeVm::default();
        let text = "guestinfo.vice./common/id = \"id1\"\n\
                    guestinfo.vice./channel/secret@secret = \"c2VjcmV0\"\n\
                    guestinfo.vice./sessions = \"id1\"\n\
                    guestinfo.vice./sessions|id1/cmd/Path = \"/bin/sh\"\n";
        vm.guestinfo = guestinfo::vmx::parse(text).unwrap();
        let rpc = std::cell::RefCell::new(Rpci::open(vm).unwrap());
        let source = guestinfo::LookupSource(|k: &str| rpc.borrow_mut().info_get(k).ok().flatten());
        let spec = guestinfo::spec::decode(&source).unwrap();
        assert_eq!(spec.id, "id1");
        assert_eq!(spec.secret, b"secret");
        assert_eq!(spec.main_session().unwrap().path, "/bin/sh");
    }

    #[test]
    fn network_write_back_is_vics_assigned_keys() {
        let endpoints = [wire::EndpointStatus {
            network: "bridge".into(),
            ipv4: vec!["10.0.2.15/24".into()],
            gateway: Some("10.0.2.2".into()),
            nameservers: vec!["10.0.2.3".into(), "10.0.2.4".into()],
            ..Default::default()
        }];
        let mut rpc = Rpci::open(FakeVm::default()).unwrap();
        for (k, v) in network_pairs(&endpoints) {
            assert!(rpc.info_set(&k, &v).unwrap());
        }
        let get = |rpc: &mut Rpci<FakeVm>, k: &str| rpc.info_get(k).unwrap().unwrap();
        assert_eq!(
            get(&mut rpc, "guestinfo.vice..networks|bridge.assigned"),
            "10.0.2.15/24"
        );
        assert_eq!(
            get(
                &mut rpc,
                "guestinfo.vice..networks|bridge.network.assigned.dns~"
            ),
            "10.0.2.3|10.0.2.4"
        );
    }

    #[test]
    fn a_refused_step_is_an_error_naming_it() {
        struct Dead;
        impl Backdoor for Dead {
            fn call(&mut self, r: &mut Regs) {
                r.ecx = 0;
            }
        }
        let e = Rpci::open(Dead).err().unwrap();
        assert_eq!(e.to_string(), "backdoor open failed (status 0x0000)");
    }
}
