//! What every verb needs: the [`Context`] (where the control plane is, how
//! to reach it, how to print) and [`emit`], which writes a verb's output.

use crate::client::ControlPlane;
use crate::output::Format;
use gateway_common::grpc_tls::ClientTlsFiles;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What every verb needs: where the control plane is, how to reach it,
/// and how to print.
pub struct Context {
    /// gRPC URL of the control plane.
    pub control_plane: String,
    /// TLS files of an https:// control plane.
    pub tls: TlsFiles,
    /// Output format.
    pub format: Format,
}

/// The TLS files gwctl was given (`--ca-file`, `--client-cert`,
/// `--client-key`); empty values mean unset.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA certificates trusted besides the platform's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain.
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    fn files(&self) -> ClientTlsFiles<'_> {
        fn given(p: &Option<PathBuf>) -> Option<&Path> {
            p.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        ClientTlsFiles {
            ca_file: given(&self.ca_file),
            client_cert: given(&self.client_cert),
            client_key: given(&self.client_key),
        }
    }
}

impl Context {
    /// Connects to the control plane (over TLS for an https:// URL).
    pub async fn connect(&self) -> anyhow::Result<ControlPlane> {
        Ok(ControlPlane::connect_with(&self.control_plane, self.tls.files()).await?)
    }
}

/// Writes to stdout; a closed pipe (e.g. `| head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
