// host_shim.cpp: the runtime of attnlab's host device (runtime/host.rs),
// built once per wave size into its own shared library that every kernel
// library links (what portable.h's ATTNLAB_HOST branch declares is defined
// here; host_launch.h calls attnlab_host_run). host.rs puts portable.h and
// host_launch.h (with ATTNLAB_HOST_RUNTIME defined) in front of it.
//
// The kernels run as written: every GPU thread of a block is a fiber (its own
// stack, switched in user space), one OS thread runs one block at a time and
// several OS threads take blocks from a shared counter. Scheduling is
// deterministic per block: fibers run in thread order, each until its next
// barrier. A barrier releases when every live thread of its scope (block for
// __syncthreads, the WAVE_SIZE lanes of one wave for a shuffle) has arrived;
// a thread that returns leaves both scopes, as exited threads do on the GPU.
//
// What the GPU leaves undefined is an error here, not silence: a shuffle
// reading a lane that does not exist or did not take part in the exchange
// (exited, or the block is narrower than the wave), and a block whose live
// threads all wait at barriers that cannot release (some at __syncthreads,
// others at a shuffle: divergent barriers).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <signal.h>
#include <unistd.h>
#include <sys/mman.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

__thread attnlab_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace attnlab_host {

// Fiber stacks: generous (kernels keep per-thread arrays on them), touched
// lazily (MAP_NORESERVE), with a guard page below so an overflow faults.
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned kMaxThreads = 1024;

enum class State : unsigned char { Ready, AtBlockBarrier, AtWaveBarrier, Done };

// ------------------------------------------------------- context switching
#if defined(__x86_64__)
// attnlab_host_switch(save, to): pushes the System V callee-saved registers
// and the SSE/x87 control words, stores rsp in *save, loads `to` and pops the
// same frame from it. About as cheap as a function call: no signal masks.
extern "C" void attnlab_host_switch(void** save, void* to);
asm(R"(
    .text
    .p2align 4
    .type attnlab_host_switch,@function
    .hidden attnlab_host_switch
attnlab_host_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size attnlab_host_switch, .-attnlab_host_switch
)");
struct Context {
    void* sp = nullptr;
};
inline void switch_context(Context& from, Context& to) { attnlab_host_switch(&from.sp, to.sp); }
// A fresh frame that attnlab_host_switch "returns" into `entry`, with the
// caller's floating-point control words and rsp + 8 16-byte aligned at entry.
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
    uint64_t* p = reinterpret_cast<uint64_t*>(top);
    *--p = 0;                                   // alignment slot
    *--p = reinterpret_cast<uint64_t>(entry);   // return address
    for (int i = 0; i < 6; ++i) *--p = 0;       // rbp rbx r12 r13 r14 r15
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--p = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
    c.sp = p;
}
#else
// Portable fallback: ucontext (one signal-mask syscall per switch).
struct Context {
    ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
    Context ctx;
    char* stack = nullptr;  // usable part, above the guard page
    State state = State::Ready;
};

// One OS thread's state: the fibers of the block it runs now.
struct Worker {
    std::vector<Fiber> fibers;
    Context sched;
    unsigned n = 0;        // threads per block
    unsigned current = 0;  // the running fiber
    unsigned live = 0, block_arrived = 0;
    std::vector<unsigned> wave_live, wave_arrived, wave_gen;
    std::vector<unsigned long long> xchg;  // one slot per thread
    std::vector<unsigned> xchg_gen;        // the wave generation each slot was written in
    // Dynamic shared memory: the padded size the GPU backends ask for, ending
    // at a guard page (and one before it), so a kernel indexing past it faults at once rather
    // than corrupting the host's heap.
    unsigned char* smem = nullptr;
    size_t smem_bytes = 0;
    void* smem_map = nullptr;
    size_t smem_map_bytes = 0;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    std::string error;
};
thread_local Worker* tw = nullptr;

inline unsigned nwaves(unsigned n) { return (n + WAVE_SIZE - 1) / WAVE_SIZE; }

void fiber_entry();

void set_thread_index(const Worker& w, unsigned t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
    (void)w;
}

void yield_to_scheduler(Worker& w) { switch_context(w.fibers[w.current].ctx, w.sched); }

// Stops the block: the scheduler sees the error and never resumes a fiber.
[[noreturn]] void fail(Worker& w, std::string msg) {
    if (w.error.empty()) w.error = std::move(msg);
    yield_to_scheduler(w);
    __builtin_trap();  // never resumed
}

void release_block_if_complete(Worker& w) {
    if (w.block_arrived == 0 || w.block_arrived != w.live) return;
    for (auto& f : w.fibers)
        if (f.state == State::AtBlockBarrier) f.state = State::Ready;
    w.block_arrived = 0;
}

void release_wave_if_complete(Worker& w, unsigned wave) {
    if (w.wave_arrived[wave] == 0 || w.wave_arrived[wave] != w.wave_live[wave]) return;
    const unsigned lo = wave * WAVE_SIZE, hi = lo + WAVE_SIZE < w.n ? lo + WAVE_SIZE : w.n;
    for (unsigned t = lo; t < hi; ++t)
        if (w.fibers[t].state == State::AtWaveBarrier) w.fibers[t].state = State::Ready;
    w.wave_arrived[wave] = 0;
    w.wave_gen[wave] += 1;
}

void wave_barrier(Worker& w) {
    const unsigned wave = w.current / WAVE_SIZE;
    w.fibers[w.current].state = State::AtWaveBarrier;
    w.wave_arrived[wave] += 1;
    release_wave_if_complete(w, wave);
    yield_to_scheduler(w);
}

void fiber_entry() {
    Worker& w = *tw;
    w.body(w.ctx);
    const unsigned t = w.current, wave = t / WAVE_SIZE;
    w.fibers[t].state = State::Done;
    w.live -= 1;
    w.wave_live[wave] -= 1;
    release_block_if_complete(w);
    release_wave_if_complete(w, wave);
    yield_to_scheduler(w);
    __builtin_trap();  // a finished fiber is never resumed
}

std::string deadlock_report(const Worker& w) {
    unsigned at_block = 0;
    std::string waves;
    for (unsigned t = 0; t < w.n; ++t) {
        if (w.fibers[t].state == State::AtBlockBarrier) at_block += 1;
        if (w.fibers[t].state == State::AtWaveBarrier && (waves.size() < 200))
            waves += (waves.empty() ? "" : ", ") + std::to_string(t);
    }
    return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
           std::to_string(blockIdx.z) + "): barriers cannot release: " + std::to_string(at_block) +
           " threads wait at __syncthreads while threads [" + waves + "] wait in a shuffle (divergent barriers)";
}

// Runs one block to completion; false with w.error set on a kernel fault.
bool run_block(Worker& w) {
    for (unsigned t = 0; t < w.n; ++t) {
        w.fibers[t].state = State::Ready;
        make_context(w.fibers[t].ctx, w.fibers[t].stack, kStackBytes, fiber_entry);
    }
    w.live = w.n;
    w.block_arrived = 0;
    for (unsigned k = 0; k < nwaves(w.n); ++k) {
        const unsigned lanes = (k + 1) * WAVE_SIZE <= w.n ? WAVE_SIZE : w.n - k * WAVE_SIZE;
        w.wave_live[k] = lanes;
        w.wave_arrived[k] = 0;
    }
    memset(w.smem, 0, w.smem_bytes);
    while (w.live > 0) {
        bool ran = false;
        for (unsigned t = 0; t < w.n; ++t) {
            if (w.fibers[t].state != State::Ready) continue;
            w.current = t;
            set_thread_index(w, t);
            switch_context(w.sched, w.fibers[t].ctx);
            if (!w.error.empty()) return false;
            ran = true;
        }
        if (!ran && w.live > 0) {
            w.error = deadlock_report(w);
            return false;
        }
    }
    return true;
}

// A kernel that faults (an index past a buffer) takes the process down as on
// a GPU it would the context, but first says which thread of which block did,
// then hands the signal to the previous handler (Rust's, or the default).
struct sigaction previous_segv, previous_bus;
void on_fault(int sig, siginfo_t* info, void*) {
    if (Worker* w = tw) {
        char msg[256];
        const int n = snprintf(msg, sizeof msg,
                               "attnlab host device: kernel fault at %p in thread %u of block (%u, %u, %u); "
                               "dynamic shared memory is [%p, %p)\n",
                               info->si_addr, w->current, blockIdx.x, blockIdx.y, blockIdx.z, (void*)w->smem,
                               (void*)(w->smem + w->smem_bytes));
        if (n > 0) (void)!write(2, msg, size_t(n) < sizeof msg ? size_t(n) : sizeof msg - 1);
    }
    sigaction(sig, sig == SIGSEGV ? &previous_segv : &previous_bus, nullptr);  // the fault repeats there
}
void install_fault_report() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
        sigaction(SIGBUS, &sa, &previous_bus);
    });
}

struct Shared {
    const Launch* l;
    void (*body)(void*);
    void* ctx;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> stop{false};
    std::mutex m;
    std::string error;
};

void worker_main(Shared& s) {
    const Launch& l = *s.l;
    Worker w;
    w.n = l.block[0] * l.block[1] * l.block[2];
    w.body = s.body;
    w.ctx = s.ctx;
    w.fibers.resize(w.n);
    w.wave_live.assign(nwaves(w.n), 0);
    w.wave_arrived.assign(nwaves(w.n), 0);
    w.wave_gen.assign(nwaves(w.n), 1);
    w.xchg.assign(w.n, 0);
    w.xchg_gen.assign(w.n, 0);
    std::vector<void*> maps;
    {
        const size_t page = 4096;
        w.smem_bytes = l.shared_bytes;  // already LaunchDims::shared_bytes_padded (16-byte multiple)
        const size_t data = (w.smem_bytes + page - 1) / page * page;
        w.smem_map_bytes = data + 2 * page;
        w.smem_map = mmap(nullptr, w.smem_map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (w.smem_map == MAP_FAILED || (data > 0 && mprotect(static_cast<char*>(w.smem_map) + page, data,
                                                             PROT_READ | PROT_WRITE) != 0)) {
            std::lock_guard<std::mutex> g(s.m);
            if (s.error.empty()) s.error = "mmap of the block's shared memory failed";
            s.stop = true;
            return;
        }
        w.smem = static_cast<unsigned char*>(w.smem_map) + page + data - w.smem_bytes;
    }
    for (auto& f : w.fibers) {
        void* m = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::lock_guard<std::mutex> g(s.m);
            if (s.error.empty()) s.error = "mmap of a fiber stack failed";
            s.stop = true;
            break;
        }
        mprotect(m, kGuardBytes, PROT_NONE);
        maps.push_back(m);
        f.stack = static_cast<char*>(m) + kGuardBytes;
    }
    tw = &w;
    gridDim = {l.grid[0], l.grid[1], l.grid[2]};
    blockDim = {l.block[0], l.block[1], l.block[2]};
    const unsigned long long blocks = (unsigned long long)l.grid[0] * l.grid[1] * l.grid[2];
    while (maps.size() == w.fibers.size() && !s.stop.load()) {
        const unsigned long long b = s.next.fetch_add(1);
        if (b >= blocks) break;
        blockIdx = {unsigned(b % l.grid[0]), unsigned((b / l.grid[0]) % l.grid[1]),
                    unsigned(b / ((unsigned long long)l.grid[0] * l.grid[1]))};
        if (!run_block(w)) {
            std::lock_guard<std::mutex> g(s.m);
            if (s.error.empty()) s.error = w.error;
            s.stop = true;
        }
    }
    tw = nullptr;
    for (void* m : maps) munmap(m, kStackBytes + kGuardBytes);
    munmap(w.smem_map, w.smem_map_bytes);
}

void write_error(const std::string& msg, char* err, unsigned long long errlen) {
    if (errlen == 0) return;
    const size_t n = msg.size() < errlen - 1 ? msg.size() : errlen - 1;
    memcpy(err, msg.data(), n);
    err[n] = 0;
}

}  // namespace attnlab_host

// Runs the grid: blocks spread over l->workers OS threads, each block's
// threads as fibers calling body(ctx). 0, or 1 with a message in err.
extern "C" int attnlab_host_run(const attnlab_host::Launch* l, void (*body)(void*), void* ctx, char* err,
                                unsigned long long errlen) {
    using namespace attnlab_host;
    const unsigned long long n = (unsigned long long)l->block[0] * l->block[1] * l->block[2];
    if (n == 0 || n > kMaxThreads) {
        write_error("block of " + std::to_string(n) + " threads: allowed 1 .. 1024", err, errlen);
        return 1;
    }
    const unsigned long long blocks = (unsigned long long)l->grid[0] * l->grid[1] * l->grid[2];
    if (blocks == 0) return 0;
    install_fault_report();
    Shared s;
    s.l = l;
    s.body = body;
    s.ctx = ctx;
    unsigned workers = l->workers == 0 ? 1 : l->workers;
    if (workers > blocks) workers = (unsigned)blocks;
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < workers; ++i) pool.emplace_back([&s] { worker_main(s); });
    worker_main(s);
    for (auto& t : pool) t.join();
    if (!s.error.empty()) {
        write_error(s.error, err, errlen);
        return 1;
    }
    return 0;
}

// ------------------------------------------ what portable.h's host branch declares
void attnlab_host_syncthreads() {
    using namespace attnlab_host;
    Worker& w = *tw;
    w.fibers[w.current].state = State::AtBlockBarrier;
    w.block_arrived += 1;
    release_block_if_complete(w);
    yield_to_scheduler(w);
}

void* attnlab_host_dynamic_shared() {
    using namespace attnlab_host;
    return tw->smem;
}

// One xor shuffle of the current wave: every live lane writes its slot, waits
// for the wave, reads lane ^ lane_mask, and waits again so no slot is
// overwritten by the next shuffle before every lane has read it.
unsigned long long attnlab_host_shfl_xor_bits(unsigned long long bits, int lane_mask) {
    using namespace attnlab_host;
    Worker& w = *tw;
    const unsigned t = w.current, wave = t / WAVE_SIZE, lane = t % WAVE_SIZE;
    const unsigned gen = w.wave_gen[wave];
    w.xchg[t] = bits;
    w.xchg_gen[t] = gen;
    wave_barrier(w);
    const unsigned src_lane = lane ^ (unsigned)lane_mask, src = wave * WAVE_SIZE + src_lane;
    if (lane_mask < 0 || src_lane >= WAVE_SIZE || src >= w.n || w.xchg_gen[src] != gen) {
        const char* why = (lane_mask < 0 || src_lane >= WAVE_SIZE) ? "outside the wave"
                          : src >= w.n                             ? "beyond the block's last thread"
                                                                   : "a lane that did not take part (exited)";
        fail(w, "shuffle xor " + std::to_string(lane_mask) + " (WAVE_SIZE " + std::to_string(WAVE_SIZE) +
                    "): thread " + std::to_string(t) + " of block (" + std::to_string(blockIdx.x) + ", " +
                    std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + ") reads thread " +
                    std::to_string(src) + ", " + why);
    }
    const unsigned long long got = w.xchg[src];
    wave_barrier(w);
    return got;
}

// Every live lane of the current wave posts a pointer to its `bytes`, waits
// for the wave, copies every lane's bytes into `all` (lane-major) and waits
// again, so no lane returns (and overwrites its posted bytes) before every
// lane has copied them. The matrix-instruction models of portable.h use it.
void attnlab_host_wave_gather(const void* mine, void* all, unsigned bytes) {
    using namespace attnlab_host;
    Worker& w = *tw;
    const unsigned t = w.current, wave = t / WAVE_SIZE;
    const unsigned gen = w.wave_gen[wave];
    w.xchg[t] = (unsigned long long)(uintptr_t)mine;
    w.xchg_gen[t] = gen;
    wave_barrier(w);
    for (unsigned l = 0; l < WAVE_SIZE; ++l) {
        const unsigned src = wave * WAVE_SIZE + l;
        if (src >= w.n || w.xchg_gen[src] != gen)
            fail(w, "wave gather (WAVE_SIZE " + std::to_string(WAVE_SIZE) + "): thread " + std::to_string(t) +
                        " of block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
                        std::to_string(blockIdx.z) + ") needs thread " + std::to_string(src) +
                        ", which " + (src >= w.n ? "is beyond the block's last thread" : "did not take part (exited)"));
        memcpy((char*)all + (size_t)l * bytes, (const void*)(uintptr_t)w.xchg[src], bytes);
    }
    wave_barrier(w);
}
