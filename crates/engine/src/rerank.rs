//! A reranker's input: each document paired with the query, laid out as llama-server
//! lays it out without a rerank template, so the two give the same scores on one GGUF.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parlance_core::Code;
use parlance_core::Error;
use parlance_core::ParamPath;

/// `[BOS] query [EOS] [SEP] document [EOS]`, each marker where the vocabulary adds it
/// (EOS falls back to SEP); a pair over the context is a 400 naming its document.
pub(crate) fn pairs(
    model: &LlamaModel,
    ctx: usize,
    query: &str,
    documents: &[String],
) -> Result<Vec<Vec<LlamaToken>>, Error> {
    let vocab = model.vocab();
    let eos = match vocab.eos() {
        t if t.0 < 0 => vocab.sep(),
        t => t,
    };
    let q = vocab.tokenize(query.as_bytes(), false, false);
    let mut out = Vec::with_capacity(documents.len());
    for (i, doc) in documents.iter().enumerate() {
        let mut toks = Vec::with_capacity(q.len() + doc.len() / 3 + 4);
        if vocab.should_add_bos() {
            toks.push(vocab.bos());
        }
        toks.extend_from_slice(&q);
        if vocab.should_add_eos() {
            toks.push(eos);
        }
        if vocab.should_add_sep() {
            toks.push(vocab.sep());
        }
        toks.extend(vocab.tokenize(doc.as_bytes(), false, false));
        if vocab.should_add_eos() {
            toks.push(eos);
        }
        if toks.len() > ctx {
            let at = ParamPath::field("documents").at(i);
            return Err(Error::invalid_param(
                &at,
                format!(
                    "The query with {at} takes {} tokens, more than this model's context of {ctx} tokens.",
                    toks.len()
                ),
            )
            .with_code(Code::ContextLengthExceeded));
        }
        out.push(toks);
    }
    Ok(out)
}
