//! GPU side: the context that owns the device, the shader sources and the
//! kernel table.

pub mod context;
pub mod kernels;
pub mod layout;
pub mod shaders;

pub use context::{AdapterRequest, GpuContext};
pub use kernels::{Bind, KernelId};
