//! Checks of what callers and operators hand the engine, before llama.cpp sees it.

use parlance_core::Error;

/// Says what is wrong with a path that is no GGUF file, before llama.cpp gets it (it
/// would only say "null result from llama cpp").
pub(crate) fn check_gguf(path: &std::path::Path) -> Result<(), String> {
    use std::io::Read;
    let shown = path.display();
    if path.is_dir() {
        return Err(format!(
            "{shown} is a directory; -m takes a .gguf file (e.g. {shown}/model.gguf)"
        ));
    }
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("model file {shown} does not exist"),
        _ => format!("cannot open model file {shown}: {e}"),
    })?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(format!(
            "{shown} is not a GGUF model file (it does not start with the GGUF magic); \
             Parlance loads llama.cpp's GGUF format: convert other formats with llama.cpp's convert_hf_to_gguf.py"
        ));
    }
    Ok(())
}

/// A bias on a token the model does not have: lowering it changes nothing, so it is
/// accepted (seed 001 sends GPT-2's `50256: -100` to every model); raising it cannot
/// be honoured, so it is a 400 naming the token.
pub(crate) fn check_logit_bias(bias: &[(i32, f32)], n_vocab: i32) -> Result<(), Error> {
    match bias
        .iter()
        .find(|&&(t, b)| (t < 0 || t >= n_vocab) && b > 0.0)
    {
        Some(&(tok, b)) => Err(Error::invalid_param(
            "logit_bias",
            format!(
                "logit_bias raises token {tok} by {b}, but this model's vocabulary has ids 0..{n_vocab} only"
            ),
        )),
        None => Ok(()),
    }
}

/// The biases that apply to this vocabulary (the others were checked to be harmless).
pub(crate) fn in_vocab(bias: &[(i32, f32)], n_vocab: i32) -> Vec<(i32, f32)> {
    bias.iter()
        .copied()
        .filter(|&(t, _)| t >= 0 && t < n_vocab)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_outside_vocab() {
        assert!(check_logit_bias(&[(50256, -100.0), (-3, -1.0), (5, 10.0)], 49152).is_ok());
        let e = check_logit_bias(&[(50256, 5.0)], 49152).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logit_bias"));
        assert!(e.message.contains("50256"), "{}", e.message);
        assert_eq!(
            in_vocab(&[(50256, -100.0), (7, 1.0)], 49152),
            vec![(7, 1.0)]
        );
    }
}
