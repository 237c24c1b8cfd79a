// prefix_prefill.hip: sim/src/kernels/prefix_prefill.rs (vLLM's
// context_attention_fwd: Triton _fwd_kernel, and _fwd_kernel_alibi with
// ALiBi), ported loop for loop, reading K/V through any KvLayout.
//
// The sim's program (b, head, start_m) owns BLOCK_M query rows; its rows are
// independent RowStates, so this kernel splits each program into chunks of
// ROWS_PER_PROGRAM rows (a divisor of BLOCK_M, so a chunk lies in one
// program and keeps that program's loop bounds). Grid (num_reqs,
// cdiv(max_query_len, ROWS_PER_PROGRAM), Hq); program (b, c, head), rows
// i in [c * R, min(c * R + R, q_len)), query position p = ctx + i:
//   (A) cached context, keys s .. min(s + CTX_TILE, ctx), s ascending, no
//       causal mask;
//   (B) new tokens, keys ctx + s .. ctx + min(s + BLOCK_N, q_len) for s in
//       0 .. min(upper, q_len) step BLOCK_N, upper = causal ? (start_m + 1)
//       * BLOCK_M : round_up(q_len, BLOCK_N); causal per meta.causal.
//   per tile, as unified_attention.hip:
//     A) per (row, key): dot = fmaf chain over d of q . dequant_kv(k), then
//        -inf unless visible(t, p, causal, SW); alibi: bias = slope * (t - p),
//        -inf where bias > 0, else score(dot, bias) (no window)
//     B) per row: tile_max, tile_begin, p_j = exp2c(s_j - m_ref), tile_sum
//        ascending, l = fmaf(l, alpha, tile_sum), m = m_new
//     C) per (row, d): acc = acc * alpha; fmaf(round_q(p_j), dequant_kv(v), acc)
//   out = round_q(acc / (l + L_EPS)) (1e-10; 0 for the alibi kernel).
// Requests with q_len == 0, or q_len == 1 under skip_decode, are not touched.
// Compile-time constants: Q_DTYPE, KV_DTYPE.

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;

struct PrefixArgs {
    i64 num_reqs, num_heads, num_kv_heads, head_size, block_size, max_blocks;
    i64 block_m, ctx_tile, block_n, rows_per_program, window;
    i32 layout_kind, causal, skip_decode, has_sinks, has_alibi, pad;
    float scale, scale_log2, softcap, k_scale, v_scale, l_eps;
};

// The per-program pieces every tile update reads.
struct PrefixProgram {
    const typename Q::T* query;
    const typename KV::T* k_cache;
    const typename KV::T* v_cache;
    const i32* bt;
    KvLayout L;
    i64 first_token, row0, n_rows, ctx, head, kvh;
    float slope;
    float *s_tile, *acc, *m_i, *l_i, *alpha_i;
};

// prefix_prefill.rs `score`: base-2 score of key t for query position p.
DEVICE float prefix_score(const PrefixArgs& a, float slope, float dot, i64 t, i64 p, bool causal) {
    if (!visible(t, p, causal, a.has_alibi ? 0 : a.window)) return f32_neg_inf();
    if (!a.has_alibi) return score(dot, a.scale, a.scale_log2, a.softcap, 0.0f);
    const float bias = slope * ((float)t - (float)p);
    return bias <= 0.0f ? score(dot, a.scale, a.scale_log2, a.softcap, bias) : f32_neg_inf();
}

// One RowState::update of every row of the program over keys t0 .. t0 + n.
DEVICE void tile_update(const PrefixArgs& a, const PrefixProgram& g, i64 t0, i64 n, bool causal, i64 TILE) {
    const i64 D = a.head_size;
    for (i64 idx = threadIdx.x; idx < g.n_rows * n; idx += blockDim.x) {
        const i64 r = idx / n, jj = idx % n, t = t0 + jj;
        const typename Q::T* q = g.query + ((g.first_token + r) * a.num_heads + g.head) * D;
        const i64 blk = g.bt[t / a.block_size], off = t % a.block_size;
        float dot = 0.0f;
        for (i64 d = 0; d < D; ++d)
            dot = fmaf(Q::load(q[d]), dequant_kv<Q_DTYPE, KV_DTYPE>(g.k_cache[k_offset(g.L, blk, off, g.kvh, d)], a.k_scale), dot);
        g.s_tile[r * TILE + jj] = prefix_score(a, g.slope, dot, t, g.ctx + g.row0 + r, causal);
    }
    __syncthreads();
    for (i64 r = threadIdx.x; r < g.n_rows; r += blockDim.x) {
        float tile_max = f32_neg_inf();
        for (i64 jj = 0; jj < n; ++jj) tile_max = fmaxf(tile_max, g.s_tile[r * TILE + jj]);
        const TileStats ts = tile_begin(g.m_i[r], tile_max);
        float tile_sum = 0.0f;
        for (i64 jj = 0; jj < n; ++jj) {
            const float p = exp2c(g.s_tile[r * TILE + jj] - ts.m_ref);
            tile_sum = tile_sum + p;
            g.s_tile[r * TILE + jj] = p;
        }
        g.l_i[r] = fmaf(g.l_i[r], ts.alpha, tile_sum);
        g.m_i[r] = ts.m_new;
        g.alpha_i[r] = ts.alpha;
    }
    __syncthreads();
    for (i64 idx = threadIdx.x; idx < g.n_rows * D; idx += blockDim.x) {
        const i64 r = idx / D, d = idx % D;
        float acc_d = g.acc[idx] * g.alpha_i[r];
        for (i64 jj = 0; jj < n; ++jj) {
            const float p = g.s_tile[r * TILE + jj];
            if (p != 0.0f) {
                const i64 t = t0 + jj, blk = g.bt[t / a.block_size], off = t % a.block_size;
                acc_d = fmaf(round_to<Q_DTYPE>(p), dequant_kv<Q_DTYPE, KV_DTYPE>(g.v_cache[v_offset(g.L, blk, off, g.kvh, d)], a.v_scale), acc_d);
            }
        }
        g.acc[idx] = acc_d;
    }
    __syncthreads();
}

extern "C" __global__ void context_attention_fwd(
    const typename Q::T* __restrict__ query, const typename KV::T* __restrict__ k_cache,
    const typename KV::T* __restrict__ v_cache, const i32* __restrict__ block_table, const i32* __restrict__ qsl,
    const i32* __restrict__ seq_lens, const float* __restrict__ sinks, const float* __restrict__ alibi_slopes,
    typename Q::T* __restrict__ out, PrefixArgs a) {
    extern __shared__ float smem[];
    const i64 b = blockIdx.x, chunk = blockIdx.y, head = blockIdx.z;
    const i64 R = a.rows_per_program, D = a.head_size;
    const i64 q_len = qsl[b + 1] - qsl[b], ctx = seq_lens[b] - q_len;
    const i64 row0 = chunk * R;
    if (q_len == 0 || (a.skip_decode && q_len == 1) || row0 >= q_len) return;
    const i64 TILE = max(a.ctx_tile, a.block_n);
    PrefixProgram g;
    g.query = query;
    g.k_cache = k_cache;
    g.v_cache = v_cache;
    g.bt = block_table + b * a.max_blocks;
    KvLayout L = {a.layout_kind, a.block_size, a.num_kv_heads, D, 16 / (i64)sizeof(typename KV::T)};
    g.L = L;
    g.row0 = row0;
    g.n_rows = min(row0 + R, q_len) - row0;
    g.first_token = qsl[b] + row0;
    g.ctx = ctx;
    g.head = head;
    g.kvh = head / (a.num_heads / a.num_kv_heads);
    g.slope = a.has_alibi ? alibi_slopes[head] : 0.0f;
    g.s_tile = smem;                   // [R][TILE]: scores, then p
    g.acc = g.s_tile + R * TILE;       // [R][D]
    g.m_i = g.acc + R * D;             // [R]
    g.l_i = g.m_i + R;
    g.alpha_i = g.l_i + R;
    for (i64 r = threadIdx.x; r < g.n_rows; r += blockDim.x) {
        g.m_i[r] = a.has_sinks ? sinks[head] * LOG2E : f32_neg_inf();
        g.l_i[r] = a.has_sinks ? 1.0f : 0.0f;
    }
    for (i64 i = threadIdx.x; i < g.n_rows * D; i += blockDim.x) g.acc[i] = 0.0f;
    __syncthreads();
    // (A) the cached context: no causal mask.
    for (i64 s = 0; s < ctx; s += a.ctx_tile) tile_update(a, g, s, min(s + a.ctx_tile, ctx) - s, false, TILE);
    // (B) the new tokens.
    const i64 start_m = row0 / a.block_m;
    const bool causal = a.causal != 0;
    const i64 upper = causal ? (start_m + 1) * a.block_m : (q_len + a.block_n - 1) / a.block_n * a.block_n;
    for (i64 s = 0; s < min(upper, q_len); s += a.block_n)
        tile_update(a, g, ctx + s, min(s + a.block_n, q_len) - s, causal, TILE);
    for (i64 idx = threadIdx.x; idx < g.n_rows * D; idx += blockDim.x) {
        const i64 r = idx / D, d = idx % D;
        out[((g.first_token + r) * a.num_heads + head) * D + d] = Q::store(g.acc[idx] / (g.l_i[r] + a.l_eps));
    }
}
