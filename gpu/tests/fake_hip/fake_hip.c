/* A stand-in for ROCm's libamdhip64 and libhiprtc, built by
 * gpu/tests/hip_fake.rs with the system C compiler, so that the HIP side of
 * attnlab's Device (gpu/src/runtime/hip.rs) runs in `cargo test` with no AMD
 * GPU. It records every call in a log (fake_log), serves "device" memory
 * from the host heap, and "runs" two kernels on the CPU: fake_scale(float*
 * out, const float* in, float a, int n) and fake_struct(long long* out,
 * struct {long long a; int b; float c;} s), so that argument packing is
 * checked by the values that come back.
 *
 * Parts (one shared library per build):
 *   -DFAKE_PART_HIP   the runtime (libamdhip64)
 *   -DFAKE_PART_RTC   hipRTC (libhiprtc; both parts together: HIP 5's
 *                     libamdhip64, which carried hipRTC)
 *   -DFAKE_R0600      also export hipGetDevicePropertiesR0600 (HIP >= 6)
 *   -DFAKE_ARCH="..." the gcnArchName the device reports
 * Layouts: hipDeviceProp_t's gcnArchName sits at byte 396 of 792 (HIP 5,
 * R0000) and at byte 1160 of 1472 (HIP 6/7, R0600). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef FAKE_ARCH
#define FAKE_ARCH "gfx942:sramecc+:xnack-"
#endif

static char fake_log_buf[1 << 16];
static size_t fake_log_len;

static void fake_note(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (fake_log_len < sizeof fake_log_buf - 256) {
        int n = vsnprintf(fake_log_buf + fake_log_len, sizeof fake_log_buf - fake_log_len - 1, fmt, ap);
        if (n > 0) fake_log_len += (size_t)n;
        fake_log_buf[fake_log_len++] = '\n';
        fake_log_buf[fake_log_len] = 0;
    }
    va_end(ap);
}

const char* fake_log(void) { return fake_log_buf; }

#ifdef FAKE_PART_HIP

enum {
    hipSuccess = 0,
    hipErrorInvalidValue = 1,
    hipErrorOutOfMemory = 2,
    hipErrorInvalidMemcpyDirection = 21,
    hipErrorInvalidDevice = 101,
    hipErrorInvalidImage = 200,
    hipErrorNotFound = 500,
};

const char* hipGetErrorString(int e) {
    switch (e) {
    case hipSuccess: return "fake no error";
    case hipErrorInvalidValue: return "fake invalid argument";
    case hipErrorOutOfMemory: return "fake out of memory";
    case hipErrorInvalidMemcpyDirection: return "fake invalid copy direction";
    case hipErrorInvalidDevice: return "fake invalid device ordinal";
    case hipErrorInvalidImage: return "fake device kernel image is invalid";
    case hipErrorNotFound: return "fake named symbol not found";
    default: return "fake unknown error";
    }
}

int hipInit(unsigned flags) { fake_note("hipInit %u", flags); return 0; }
int hipGetDeviceCount(int* n) { fake_note("hipGetDeviceCount"); *n = 1; return 0; }
int hipSetDevice(int d) { return d == 0 ? 0 : hipErrorInvalidDevice; }

int hipDeviceGetAttribute(int* v, int attr, int dev) {
    fake_note("hipDeviceGetAttribute %d %d", attr, dev);
    switch (attr) {
    case 5: *v = 2100000; return 0;  /* clock rate, kHz */
    case 19: *v = 4 << 20; return 0; /* L2 bytes */
    case 63: *v = 304; return 0;     /* multiprocessors (CUs) */
    default: return hipErrorInvalidValue; /* 10003 included, as HIP >= 6 */
    }
}

int hipDeviceGetName(char* name, int len, int dev) {
    fake_note("hipDeviceGetName %d %d", len, dev);
    snprintf(name, (size_t)len, "Fake Instinct MI300X");
    return 0;
}

int hipDeviceTotalMem(size_t* bytes, int dev) {
    fake_note("hipDeviceTotalMem %d", dev);
    *bytes = (size_t)192 << 30;
    return 0;
}

static int fill_props(void* props, size_t size, size_t arch_at) {
    memset(props, 0, size);
    snprintf((char*)props, 256, "Fake Instinct MI300X");
    snprintf((char*)props + arch_at, 256, "%s", FAKE_ARCH);
    return 0;
}

int hipGetDeviceProperties(void* props, int dev) {
    fake_note("hipGetDeviceProperties R0000 %d", dev);
    return fill_props(props, 792, 396);
}

#ifdef FAKE_R0600
int hipGetDevicePropertiesR0600(void* props, int dev) {
    fake_note("hipGetDevicePropertiesR0600 %d", dev);
    return fill_props(props, 1472, 1160);
}
#endif

int hipMalloc(void** p, size_t n) {
    fake_note("hipMalloc %zu", n);
    if (n > ((size_t)1 << 40)) return hipErrorOutOfMemory;
    *p = calloc(1, n);
    return *p ? 0 : hipErrorOutOfMemory;
}

int hipFree(void* p) { fake_note("hipFree"); free(p); return 0; }

int hipMemcpy(void* dst, const void* src, size_t n, int kind) {
    fake_note("hipMemcpy %zu kind %d", n, kind);
    if (kind < 1 || kind > 3) return hipErrorInvalidMemcpyDirection;
    memcpy(dst, src, n);
    return 0;
}

int hipMemcpyAsync(void* dst, const void* src, size_t n, int kind, void* stream) {
    fake_note("hipMemcpyAsync %zu kind %d stream %p", n, kind, stream);
    if (kind < 1 || kind > 3) return hipErrorInvalidMemcpyDirection;
    memcpy(dst, src, n);
    return 0;
}

int hipMemset(void* dst, int v, size_t n) { fake_note("hipMemset %d %zu", v, n); memset(dst, v, n); return 0; }

/* A module is the NUL-terminated text fake hipRTC produced. */
int hipModuleLoadData(void** module, const void* image) {
    const char* text = (const char*)image;
    if (strncmp(text, "FAKECO ", 7) != 0) return hipErrorInvalidImage;
    fake_note("hipModuleLoadData %.*s", (int)strcspn(text, "\n"), text);
    *module = strdup(text);
    return 0;
}

int hipModuleUnload(void* module) { fake_note("hipModuleUnload"); free(module); return 0; }

int hipModuleGetFunction(void** f, void* module, const char* name) {
    fake_note("hipModuleGetFunction %s", name);
    if (!strstr((const char*)module, name)) return hipErrorNotFound;
    if (strcmp(name, "fake_scale") == 0) { *f = (void*)1; return 0; }
    if (strcmp(name, "fake_struct") == 0) { *f = (void*)2; return 0; }
    return hipErrorNotFound;
}

struct fake_struct_arg {
    long long a;
    int b;
    float c;
};

int hipModuleLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
    fake_note("hipModuleLaunchKernel %zu grid %u %u %u block %u %u %u shared %u stream %p extra %p",
              (size_t)f, gx, gy, gz, bx, by, bz, shared, stream, (void*)extra);
    if (!params) return hipErrorInvalidValue;
    if ((size_t)f == 1) {
        float* out = *(float**)params[0];
        const float* in = *(const float**)params[1];
        float a = *(float*)params[2];
        int n = *(int*)params[3];
        if ((long long)gx * bx < n) return hipErrorInvalidValue;
        for (int i = 0; i < n; i++) out[i] = a * in[i];
        return 0;
    }
    if ((size_t)f == 2) {
        long long* out = *(long long**)params[0];
        struct fake_struct_arg s;
        memcpy(&s, params[1], sizeof s);
        uint32_t cbits;
        memcpy(&cbits, &s.c, 4);
        out[0] = s.a;
        out[1] = s.b;
        out[2] = cbits;
        return 0;
    }
    return hipErrorInvalidValue;
}

int hipDeviceSynchronize(void) { fake_note("hipDeviceSynchronize"); return 0; }

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int hipEventCreate(void** e) { fake_note("hipEventCreate"); *e = calloc(1, sizeof(double)); return 0; }
int hipEventDestroy(void* e) { fake_note("hipEventDestroy"); free(e); return 0; }
int hipEventRecord(void* e, void* stream) {
    fake_note("hipEventRecord stream %p", stream);
    *(double*)e = now_ms();
    return 0;
}
int hipEventSynchronize(void* e) { (void)e; fake_note("hipEventSynchronize"); return 0; }
int hipEventElapsedTime(float* ms, void* a, void* b) {
    fake_note("hipEventElapsedTime");
    *ms = (float)(*(double*)b - *(double*)a);
    return 0;
}

#endif /* FAKE_PART_HIP */

#ifdef FAKE_PART_RTC

struct fake_prog {
    char* src;
    char* name;
    char* code;
    char log[512];
};

const char* hiprtcGetErrorString(int s) {
    switch (s) {
    case 0: return "HIPRTC_SUCCESS";
    case 3: return "HIPRTC_ERROR_INVALID_INPUT";
    case 6: return "HIPRTC_ERROR_COMPILATION";
    default: return "HIPRTC_ERROR_INTERNAL_ERROR";
    }
}

int hiprtcCreateProgram(void** prog, const char* src, const char* name, int num_headers,
                        const char* const* headers, const char* const* include_names) {
    fake_note("hiprtcCreateProgram %s headers %d %p %p", name, num_headers, (const void*)headers,
              (const void*)include_names);
    if (!src || !prog) return 3;
    struct fake_prog* p = calloc(1, sizeof *p);
    p->src = strdup(src);
    p->name = strdup(name ? name : "");
    *prog = p;
    return 0;
}

int hiprtcCompileProgram(void* prog, int n, const char* const* opts) {
    struct fake_prog* p = prog;
    const char* arch = "none";
    for (int i = 0; i < n; i++) {
        fake_note("hiprtcCompileProgram option %s", opts[i]);
        if (strncmp(opts[i], "--gpu-architecture=", 19) == 0) arch = opts[i] + 19;
    }
    const char* err = strstr(p->src, "#error");
    if (err) {
        snprintf(p->log, sizeof p->log, "%s:1: error: %.*s", p->name, (int)strcspn(err, "\n"), err);
        return 6;
    }
    size_t len = strlen(p->src) + strlen(arch) + 16;
    p->code = malloc(len);
    snprintf(p->code, len, "FAKECO %s\n%s", arch, p->src);
    return 0;
}

int hiprtcGetProgramLogSize(void* prog, size_t* n) { *n = strlen(((struct fake_prog*)prog)->log) + 1; return 0; }
int hiprtcGetProgramLog(void* prog, char* out) { strcpy(out, ((struct fake_prog*)prog)->log); return 0; }

int hiprtcGetCodeSize(void* prog, size_t* n) {
    struct fake_prog* p = prog;
    if (!p->code) return 3;
    *n = strlen(p->code) + 1;
    return 0;
}

int hiprtcGetCode(void* prog, char* out) {
    struct fake_prog* p = prog;
    if (!p->code) return 3;
    memcpy(out, p->code, strlen(p->code) + 1);
    return 0;
}

int hiprtcDestroyProgram(void** prog) {
    struct fake_prog* p = *prog;
    fake_note("hiprtcDestroyProgram");
    free(p->src);
    free(p->name);
    free(p->code);
    free(p);
    *prog = NULL;
    return 0;
}

#endif /* FAKE_PART_RTC */
