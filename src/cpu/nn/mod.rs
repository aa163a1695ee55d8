//! Mirrors of `shaders/nn/`.

pub mod mlp;
