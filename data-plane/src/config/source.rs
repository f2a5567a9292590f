//! Where the config in force came from, as the runtime, the metrics and the
//! health report name it.

/// Where the config in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// No config yet: nothing from a control plane, no usable cache.
    None,
    /// A control plane's Discovery stream (or its silence after a Hello
    /// with the version held: that version is current).
    ControlPlane,
    /// The data plane's config cache on disk, read at start.
    Cache,
    /// The standalone config file.
    File,
}

impl ConfigSource {
    /// Every source, in label order.
    pub const ALL: [ConfigSource; 4] = [Self::None, Self::ControlPlane, Self::Cache, Self::File];

    /// The label (`none`, `control_plane`, `cache`, `file`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ControlPlane => "control_plane",
            Self::Cache => "cache",
            Self::File => "file",
        }
    }
}
