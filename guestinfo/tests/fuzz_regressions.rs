//! Replays the saved inputs of the guestinfo fuzz target (fuzz/regressions/vmx_decode/*).

#[test]
fn vmx_decode_regressions() {
    assert!(wire::fuzzing::replay("vmx_decode", guestinfo::fuzzing::vmx_decode) > 0);
}
