//! pochi's integration tests: one test binary (as just, ripgrep and uv do), one harness
//! (`common`: a temporary project and the built `pochi` run in it), one module per
//! feature. Heavy modules (`export`, `quantize`, `report`, `preprocessing`) use the
//! managed Python toolchain, which pochi creates on its first run.
//!
//! Test doubles, named as such where they are used: the TensorRT STAND-IN
//! (`tests/fixtures/fake_tensorrt`, which answers from the real TensorRT Python bindings of
//! the version under test: `common::tensorrt`).

#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

mod common;
mod fuzz_support;

mod builds;
mod cache;
mod dataset;
mod diff;
mod errors;
mod export;
mod fuzz_pipeline;
mod graph_html;
mod hardening;
mod hardening3;
mod layering;
mod matrix;
mod preprocessing;
mod quantize;
mod remote_buildbox;
mod remote_cache;
mod remote_client;
mod remote_execute;
mod remote_execution;
mod remote_servers;
mod remote_tls;
mod report;
mod tensorrt_bindings;
mod tensorrt_engine;
