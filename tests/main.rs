//! sextant's integration tests: one binary, a module per scenario. They start the real
//! `sextant` binary on loopback ports with temporary data directories.

mod admin_api;
mod bench;
mod browser;
mod cli;
mod console;
mod demo;
mod durability;
mod etcd;
mod gateway;
mod gray;
mod languages;
mod plugins;
mod python_client;
mod reports;
mod rollout;
mod security;
mod storm;
mod support;
mod traces;
mod zones;
