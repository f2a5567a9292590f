//! What every verb needs: the [`Context`] (where the control plane is, how
//! to print) and [`emit`], which writes a verb's output.

use crate::client::ControlPlane;
use crate::output::Format;
use std::io::Write;

/// What every verb needs: where the control plane is and how to print.
pub struct Context {
    /// gRPC URL of the control plane.
    pub control_plane: String,
    /// Output format.
    pub format: Format,
}

impl Context {
    /// Connects to the control plane.
    pub async fn connect(&self) -> anyhow::Result<ControlPlane> {
        Ok(ControlPlane::connect(&self.control_plane).await?)
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
