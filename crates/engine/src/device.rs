//! Where a model's layers run: llama.cpp's GPU backends (Cargo features `cuda`,
//! `vulkan`, `metal`) take the first `n_gpu_layers`, the CPU the rest.

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};

/// `None`: llama.cpp's default (every layer that fits on the GPU, when there is one).
pub(crate) fn model_params(n_gpu_layers: Option<u32>) -> LlamaModelParams {
    let params = LlamaModelParams::default();
    match n_gpu_layers {
        Some(n) => params.with_n_gpu_layers(n),
        None => params,
    }
}

/// The GPUs this build can use, as `name (description)`.
pub fn gpu_devices() -> Vec<String> {
    list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| {
            matches!(
                d.device_type,
                LlamaBackendDeviceType::Gpu
                    | LlamaBackendDeviceType::IntegratedGpu
                    | LlamaBackendDeviceType::Accelerator
            )
        })
        // ggml lists its CPU-side helpers (BLAS, AMX) as accelerators too.
        .filter(|d| !matches!(d.backend.as_str(), "CPU" | "BLAS" | "AMX"))
        .map(|d| format!("{} ({})", d.name, d.description))
        .collect()
}

/// What the load message says: `on the CPU`, or `N of M layers on Vulkan0 (...)`.
/// llama.cpp counts the output layer as one more than the model's blocks.
pub(crate) fn placement(n_gpu_layers: Option<u32>, n_layer: u32) -> String {
    let gpus = gpu_devices();
    let total = n_layer + 1;
    let offloaded = n_gpu_layers.map_or(total, |n| n.min(total));
    if gpus.is_empty() || offloaded == 0 {
        return "on the CPU".to_string();
    }
    format!("{offloaded} of {total} layers on {}", gpus.join(", "))
}
