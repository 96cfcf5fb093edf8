//! Replays the saved inputs of the docker API fuzz target (fuzz/regressions/api_request/*).

#[test]
fn api_request_regressions() {
    assert!(wire::fuzzing::replay("api_request", appliance::testing::fuzzing::api_request) > 0);
}
