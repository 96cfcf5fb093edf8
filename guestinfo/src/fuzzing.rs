//! Body of the guestinfo fuzz target, shared by `fuzz/` (libFuzzer) and the regression test that
//! replays saved inputs in `make test`. It panics only on a real bug.

use crate::{identity_from_vmx, spec_from_vmx, spec_to_vmx};

/// Arbitrary text as a VMX config. Whatever decodes must encode and decode to the same spec:
/// no value, whatever its bytes (`|`, quotes, newlines), may change on the way.
pub fn vmx_decode(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = identity_from_vmx(&text);
    if let Ok(spec) = spec_from_vmx(&text) {
        let again = spec_from_vmx(&spec_to_vmx(&spec));
        assert_eq!(
            again.as_ref().ok(),
            Some(&spec),
            "spec changed in a round trip"
        );
    }
}
