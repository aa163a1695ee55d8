//! GPU side: the context that owns the device, the shader sources and the
//! kernel table.

pub mod context;
pub mod kernels;
pub mod layout;
pub mod profile;
pub mod render;
pub mod shaders;

pub use context::{AdapterRequest, Dispatch, GpuContext};
pub use kernels::{args, Bind, KernelArgs, KernelId};
