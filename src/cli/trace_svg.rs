//! `attnlab trace --svg`: the scheduler's steps as a picture, drawn from
//! the trace's own JSON (`trace --json`): per step, each request's KV as a
//! bar (context read from the cache, new tokens computed this step), the
//! context chunks a chunked-context backend gathers (ROCM_AITER_FA's
//! `cp_mha_gather_cache`) and the kernel sequence the step launches.

use super::svg::Svg;
use serde_json::Value;

/// Steps drawn at most (a long decode tail is summarised).
const MAX_STEPS: usize = 40;
/// Requests drawn at most per step.
const MAX_REQS: usize = 8;

fn u(v: &Value) -> usize {
    v.as_u64().unwrap_or(0) as usize
}

/// The kernel names of a step, runs of one name written `name ×n`.
fn kernel_line(kernels: &[Value]) -> String {
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["name"].as_str().unwrap_or("?"))
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < names.len() {
        let mut j = i;
        while j < names.len() && names[j] == names[i] {
            j += 1;
        }
        out.push(if j - i > 1 {
            format!("{} ×{}", names[i], j - i)
        } else {
            names[i].to_string()
        });
        i = j;
    }
    out.join(" → ")
}

/// Draws `trace` (the value `attnlab trace --json` prints for one backend).
pub fn draw(trace: &Value) -> String {
    let empty = Vec::new();
    let steps = trace["steps"].as_array().unwrap_or(&empty);
    let max_seq = steps
        .iter()
        .flat_map(|s| s["requests"].as_array().unwrap_or(&empty).iter())
        .map(|r| u(&r["seq_len"]))
        .max()
        .unwrap_or(1)
        .max(1);
    let (x0, span) = (110.0, 900.0);
    let px = |t: usize| x0 + span * t as f64 / max_seq as f64;
    let mut svg = Svg::new(1200.0, 0.0);
    svg.text(
        20.0,
        24.0,
        15.0,
        "start",
        &format!(
            "{} on {}: {} steps, max_num_batched_tokens {}, block size {}",
            trace["backend"].as_str().unwrap_or("?"),
            trace["model"].as_str().unwrap_or("?"),
            steps.len(),
            u(&trace["max_num_batched_tokens"]),
            u(&trace["block_size"])
        ),
    );
    // Legend.
    let mut y = 36.0;
    for (i, (fill, what)) in [
        ("hsl(0, 0%, 78%)", "context: read from the KV cache"),
        (
            "hsl(210, 70%, 55%)",
            "new tokens: computed (and written) this step",
        ),
        (
            "hsl(140, 45%, 55%)",
            "context chunk gathered, attended, merged",
        ),
    ]
    .iter()
    .enumerate()
    {
        let x = 20.0 + i as f64 * 360.0;
        svg.rect(x, y, 14.0, 12.0, fill, None, None);
        svg.text(x + 20.0, y + 10.5, 11.0, "start", what);
    }
    y += 26.0;
    // Axis.
    for k in 0..=4 {
        let t = max_seq * k / 4;
        svg.line(px(t), y, px(t), y + 5.0, "black", 1.0);
        svg.text(px(t), y - 3.0, 10.0, "middle", &format!("{t}"));
    }
    svg.line(x0, y + 5.0, x0 + span, y + 5.0, "black", 1.0);
    svg.text(
        x0 + span / 2.0,
        y + 18.0,
        10.0,
        "middle",
        "token position in the sequence",
    );
    y += 28.0;
    for s in steps.iter().take(MAX_STEPS) {
        let reqs = s["requests"].as_array().unwrap_or(&empty);
        let kernels = s["kernels"].as_array().unwrap_or(&empty);
        svg.text(
            20.0,
            y + 13.0,
            12.0,
            "start",
            &format!("step {}", u(&s["step"])),
        );
        svg.text(
            20.0,
            y + 26.0,
            9.0,
            "start",
            &format!("{} tokens", u(&s["num_tokens"])),
        );
        // Chunk sizes of the step's context gathers, in launch order: ROCM_AITER_FA's
        // `cp_mha_gather_cache` (its key is the chunk) and the MLA prefill's
        // `gather_and_maybe_dequant_cache` (its workspace: a chunk fills it, the last one
        // only in part).
        let chunks: Vec<usize> = kernels
            .iter()
            .filter_map(|k| match k["name"].as_str() {
                Some("cp_mha_gather_cache") => Some(u(&k["shapes"]["key"][0])),
                Some("gather_and_maybe_dequant_cache") => Some(u(&k["shapes"]["workspace"][0])),
                _ => None,
            })
            .collect();
        for (i, r) in reqs.iter().take(MAX_REQS).enumerate() {
            let (ctx, q, seq) = (u(&r["context_len"]), u(&r["query_len"]), u(&r["seq_len"]));
            let ry = y + i as f64 * 20.0;
            svg.rect(
                px(0),
                ry,
                px(ctx) - px(0),
                16.0,
                "hsl(0, 0%, 78%)",
                None,
                None,
            );
            // A chunked context (one extend: the chunks are that request's).
            if !chunks.is_empty() && ctx > 0 && reqs.len() == 1 {
                let mut lo = 0;
                for (c, &n) in chunks.iter().enumerate() {
                    let hi = (lo + n).min(ctx);
                    let fill = if c % 2 == 0 {
                        "hsl(140, 45%, 55%)"
                    } else {
                        "hsl(140, 45%, 70%)"
                    };
                    svg.rect(px(lo), ry, px(hi) - px(lo), 16.0, fill, Some("white"), None);
                    svg.text(
                        (px(lo) + px(hi)) / 2.0,
                        ry + 12.0,
                        10.0,
                        "middle",
                        &format!("chunk {c}: {} gathered", hi - lo),
                    );
                    lo = hi;
                }
            }
            let w = (px(seq) - px(ctx)).max(2.0);
            svg.rect(px(ctx), ry, w, 16.0, "hsl(210, 70%, 55%)", None, None);
            let label = format!(
                "{} {}: +{q} (context {ctx})",
                r["kind"].as_str().unwrap_or(""),
                u(&r["id"])
            );
            if w > 200.0 {
                svg.text(px(ctx) + w / 2.0, ry + 12.0, 10.0, "middle", &label);
            } else {
                svg.text(px(seq) + 6.0, ry + 12.0, 10.0, "start", &label);
            }
        }
        let shown = reqs.len().min(MAX_REQS);
        let mut ky = y + shown as f64 * 20.0 + 10.0;
        if reqs.len() > MAX_REQS {
            svg.text(
                x0,
                ky,
                10.0,
                "start",
                &format!("... {} more requests", reqs.len() - MAX_REQS),
            );
            ky += 13.0;
        }
        svg.text(x0, ky, 10.0, "start", &kernel_line(kernels));
        y = ky + 16.0;
    }
    if steps.len() > MAX_STEPS {
        svg.text(
            20.0,
            y + 10.0,
            11.0,
            "start",
            &format!("... {} more steps", steps.len() - MAX_STEPS),
        );
        y += 20.0;
    }
    svg.grow_to(y + 10.0);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_of_one_kernel_are_counted() {
        let k = json!([{"name": "a"}, {"name": "b"}, {"name": "b"}, {"name": "a"}]);
        assert_eq!(kernel_line(k.as_array().unwrap()), "a → b ×2 → a");
    }

    #[test]
    fn a_chunked_extend_draws_one_labelled_box_per_gathered_chunk() {
        let t = json!({"backend": "ROCM_AITER_FA", "model": "m", "steps": [{"step": 2, "num_tokens": 10,
            "requests": [{"id": 0, "kind": "extend", "query_len": 10, "context_len": 50, "seq_len": 60}],
            "kernels": [{"name": "cp_mha_gather_cache", "shapes": {"key": [32, 1, 8]}},
                        {"name": "cp_mha_gather_cache", "shapes": {"key": [18, 1, 8]}}]}]});
        let svg = draw(&t);
        assert!(
            svg.contains("chunk 0: 32 gathered") && svg.contains("chunk 1: 18 gathered"),
            "{svg}"
        );
        assert!(svg.contains("extend 0: +10 (context 50)"));
    }

    #[test]
    fn an_mla_workspace_chunk_is_drawn_only_as_far_as_the_context_reaches() {
        let t = json!({"backend": "TRITON_MLA", "model": "m", "steps": [{"step": 1, "num_tokens": 4,
            "requests": [{"id": 0, "kind": "extend", "query_len": 4, "context_len": 40, "seq_len": 44}],
            "kernels": [{"name": "gather_and_maybe_dequant_cache", "shapes": {"workspace": [32, 576]}},
                        {"name": "gather_and_maybe_dequant_cache", "shapes": {"workspace": [32, 576]}}]}]});
        let svg = draw(&t);
        assert!(
            svg.contains("chunk 0: 32 gathered") && svg.contains("chunk 1: 8 gathered"),
            "{svg}"
        );
    }
}
