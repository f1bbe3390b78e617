//! The `--remote-*` options of `pochi build`: which shared cache to use and how (see
//! docs/cache.md), turned into the remote tier of the build's cache, and which remote
//! executor runs stages (docs/remote.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cache::LocalCache;
use crate::driver::portable::PortableActions;
use crate::driver::remote::RemoteExecution;
use crate::remote::{Endpoint, RemoteCache, RemoteExecutor, RemoteTier, TlsPaths, TlsSettings};
use crate::toolchain::cache::CacheDir;

#[derive(Debug, Clone, Args)]
pub(super) struct RemoteArgs {
    /// A shared cache of stage outputs: grpc://HOST:PORT or grpcs://HOST[:PORT] (the Remote
    /// Execution API: BuildBuddy, Buildbarn, NativeLink, BuildGrid, bazel-remote), or
    /// http(s)://HOST[:PORT]/PREFIX (Bazel's HTTP cache: bazel-remote, nginx with WebDAV).
    #[arg(long, value_name = "URL", env = "POCHI_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// The REAPI instance name (gRPC only), e.g. `main`.
    #[arg(long, value_name = "NAME", env = "POCHI_REMOTE_INSTANCE")]
    pub remote_instance: Option<String>,
    /// A header sent with every call, KEY=VALUE (e.g. an API key); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub remote_header: Vec<String>,
    /// Restore from the shared cache but upload nothing (developers read what CI wrote).
    #[arg(long)]
    pub remote_cache_read_only: bool,
    /// Make any failure of the shared cache an error (CI), instead of a warning and a
    /// local build.
    #[arg(long)]
    pub remote_cache_required: bool,
    /// How long one call to the shared cache may take, in seconds (for a large blob: each
    /// chunk), before the server is given up for the build.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub remote_timeout: u64,
    /// A CA certificate (PEM; several may follow each other) that signed the remote
    /// servers' certificates, trusted in addition to the Mozilla roots (grpcs://, https://).
    #[arg(long, value_name = "FILE", env = "POCHI_TLS_CA_CERT")]
    pub tls_ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for servers that require one (mTLS); needs
    /// --tls-client-key.
    #[arg(long, value_name = "FILE", env = "POCHI_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", env = "POCHI_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
    /// Run stages on a Remote Execution API farm (grpc:// or grpcs://; BuildBuddy,
    /// Buildbarn, NativeLink, BuildGrid...). Implies --remote-cache at the same URL unless
    /// that names another. Which stages go there: `executor` in the pipeline (docs/remote.md).
    #[arg(long, value_name = "URL", env = "POCHI_REMOTE_EXECUTOR")]
    pub remote_executor: Option<String>,
    /// How many stages may run remotely at once (they take no local cpu, memory or GPU).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub remote_jobs: u32,
    /// How long a remote stage may wait for a worker that offers its platform before it
    /// fails, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub remote_queue_timeout: u64,
    /// The workers' pochi cache directory (their POCHI_CACHE_DIR when the worker image ran
    /// `pochi toolchain sync`): remote stages run the managed toolchain from there. It is
    /// part of the Action a stage is cached under too: give it the same value on every
    /// machine that shares a remote cache.
    #[arg(
        long,
        value_name = "DIR",
        env = "POCHI_REMOTE_TOOLCHAIN_DIR",
        default_value = "/opt/pochi"
    )]
    pub remote_toolchain_dir: PathBuf,
}

/// Whether `POCHI_REMOTE_EXECUTOR` names an executor: `status`, `explain` and `graph`
/// (which take no `--remote-*` options) place stages as `pochi build` would with it.
pub(super) fn executor_in_env() -> bool {
    std::env::var_os("POCHI_REMOTE_EXECUTOR").is_some_and(|url| !url.is_empty())
}

impl RemoteArgs {
    /// Whether a remote executor is named.
    pub(super) fn executor_configured(&self) -> bool {
        self.remote_executor
            .as_deref()
            .is_some_and(|u| !u.is_empty())
    }

    /// The shared cache's endpoint, if one is named (by --remote-cache, else by
    /// --remote-executor), checked.
    pub(super) fn endpoint(&self) -> miette::Result<Option<Endpoint>> {
        let named = [
            (&self.remote_cache, "--remote-cache"),
            (&self.remote_executor, "--remote-executor"),
        ];
        named
            .into_iter()
            .find_map(|(url, flag)| url.as_deref().filter(|u| !u.is_empty()).map(|u| (u, flag)))
            .map(|(url, flag)| self.endpoint_of(url, flag))
            .transpose()
    }

    /// An endpoint for `url` with the instance, headers, timeout and TLS files given (the
    /// files are read and checked now).
    fn endpoint_of(&self, url: &str, flag: &str) -> miette::Result<Endpoint> {
        let bad = |error: crate::remote::EndpointError| {
            super::output::failure(
                error.to_string(),
                format!("see `pochi build --help` and docs/remote.md for the forms {flag} takes"),
            )
        };
        let tls = TlsSettings::load(&TlsPaths {
            ca_cert: self.tls_ca_cert.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
        })?;
        let mut endpoint = Endpoint::parse(url)
            .map_err(bad)?
            .with_timeout(Duration::from_secs(self.remote_timeout))
            .with_tls(tls);
        if let Some(instance) = &self.remote_instance {
            endpoint = endpoint.with_instance(instance);
        }
        for header in &self.remote_header {
            endpoint = endpoint.with_header_arg(header).map_err(bad)?;
        }
        Ok(endpoint)
    }

    /// The remote executor, if one is named; it must answer now and execute actions.
    pub(super) fn execution(&self) -> miette::Result<Option<RemoteExecution>> {
        let Some(url) = self.remote_executor.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let endpoint = self.endpoint_of(url, "--remote-executor")?;
        let unusable = |error: crate::remote::RemoteError| {
            let hint = miette::Diagnostic::help(&error).map_or_else(
                || {
                    "check --remote-executor, --remote-instance and --remote-header; stages with \
                 `executor = \"auto\"` run locally without --remote-executor"
                        .to_string()
                },
                |help| help.to_string(),
            );
            super::output::failure(
                format!("the remote executor {endpoint} cannot be used: {error}"),
                hint,
            )
        };
        let executor = RemoteExecutor::connect(&endpoint).map_err(unusable)?;
        executor.check().map_err(unusable)?;
        Ok(Some(RemoteExecution::new(
            executor,
            Duration::from_secs(self.remote_queue_timeout),
        )))
    }

    /// How the build makes its stages' Actions portable, if it uses a remote server (a
    /// shared cache or an executor): the workers' toolchains are at
    /// `--remote-toolchain-dir`, for the cache's lookups as for the executor's runs.
    pub(super) fn portable_actions(&self) -> miette::Result<Option<PortableActions>> {
        if self.endpoint()?.is_none() {
            return Ok(None);
        }
        let local = CacheDir::from_env()
            .map_err(|e| super::output::failure(e.to_string(), "set POCHI_CACHE_DIR"))?
            .toolchains();
        let workers = CacheDir::at(&self.remote_toolchain_dir).toolchains();
        Ok(Some(PortableActions::new(local, workers)))
    }

    /// The remote tier for a build, if a shared cache is named. With
    /// `--remote-cache-required` the server must answer now.
    pub(super) fn tier(&self, local: &LocalCache) -> miette::Result<Option<RemoteTier>> {
        let Some(endpoint) = self.endpoint()? else {
            return Ok(None);
        };
        let unusable = |error: crate::remote::RemoteError| {
            let hint = miette::Diagnostic::help(&error).map_or_else(
                || {
                    "check --remote-cache, --remote-instance and --remote-header; without \
                 --remote-cache-required pochi builds locally instead"
                        .to_string()
                },
                |help| help.to_string(),
            );
            super::output::failure(
                format!("the remote cache {endpoint} cannot be used: {error}"),
                hint,
            )
        };
        let remote =
            RemoteCache::connect(&endpoint, self.remote_cache_read_only).map_err(unusable)?;
        if self.remote_cache_required {
            remote.check().map_err(unusable)?;
        }
        Ok(Some(RemoteTier::new(remote, local.clone())))
    }

    /// The error for a build whose required shared cache failed.
    pub(super) fn check_required(&self, tier: Option<&RemoteTier>) -> miette::Result<()> {
        match tier.and_then(RemoteTier::failure) {
            Some(failure) if self.remote_cache_required => Err(super::output::failure(
                failure,
                "--remote-cache-required makes a failing shared cache an error; the \
                 outputs were built locally and are correct",
            )),
            _ => Ok(()),
        }
    }
}
