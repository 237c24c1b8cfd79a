"""torch SDPA on attnlab bench's shapes (`attnlab bench --cpu` runs this).

Reads one JSON object on stdin: {"threads", "repeats", "hq", "hkv", "d",
"shapes": [{"name", "num_seqs", "q_len", "seq_len"}]} and prints one JSON
object: {"torch": version, "threads", "results": [{"case", "median_s"}]}.
f32 on the CPU, causal with the query rows at the end of the keys (as
attnlab's batches: decode rows see every key), GQA through enable_gqa,
one warm-up then the median of `repeats` runs. Inputs are random: the
timing of the CPU flash kernel does not depend on the values.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F


def main():
    req = json.load(sys.stdin)
    torch.set_num_threads(int(req["threads"]))
    torch.manual_seed(0)
    hq, hkv, d = int(req["hq"]), int(req["hkv"]), int(req["d"])
    out = []
    for sh in req["shapes"]:
        b, q_len, kv_len = int(sh["num_seqs"]), int(sh["q_len"]), int(sh["seq_len"])
        q = torch.randn(b, hq, q_len, d, dtype=torch.float32)
        k = torch.randn(b, hkv, kv_len, d, dtype=torch.float32)
        v = torch.randn(b, hkv, kv_len, d, dtype=torch.float32)
        # is_causal aligns the mask to the top-left corner; only a square
        # (prefill) or one-row (decode, every key visible) case is asked for.
        causal = q_len == kv_len and q_len > 1

        def run():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hkv != hq)

        run()
        times = []
        for _ in range(max(1, int(req["repeats"]))):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        times.sort()
        out.append({"case": sh["name"], "median_s": times[len(times) // 2]})
        del q, k, v
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": out}))


if __name__ == "__main__":
    main()
