//! Test fixtures shared by the integration tests. Each test binary uses a different part,
//! so unused items are expected.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod dscc_api;
pub mod harness;
pub mod invalid_manifests;
pub mod operator;
pub mod token_endpoint;
