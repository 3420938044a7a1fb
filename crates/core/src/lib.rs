//! Provider-neutral core of Parlance: the IR every front door and backend speaks,
//! the one error type, the `Backend` trait, the router, and chat templates.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod backend;
pub mod blocking;
pub mod collect;
pub mod embed;
pub mod error;
pub mod error_code;
pub mod ir;
pub mod lazy;
pub mod param_path;
pub mod pool;
pub mod preset;
pub mod priority;
pub mod router;
pub mod task;
pub mod template;
pub mod tools;

pub use backend::{
    Backend, Capabilities, Composition, DeploymentState, EventStream, InlineImages, Load,
    ModelInfo, Price,
};
pub use error::{Error, ErrorKind};
pub use error_code::Code;
pub use param_path::{ParamPath, Step};
pub use router::Router;
