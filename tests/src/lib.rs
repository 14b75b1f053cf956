//! Helpers shared by eci's integration tests.
