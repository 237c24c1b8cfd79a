// host_launch.h: what each kernel library of the host device
// (runtime/host.rs) adds after its translation unit: the generated
// `attnlab_launch_<entry>` functions call attnlab_host::launch, which deduces
// the parameter types from the kernel itself (no signature is parsed or
// repeated), checks each argument's kind and size against them, copies the
// values and hands the grid to the runtime (host_shim.cpp). Light headers
// only: every kernel library compiles it.
#pragma once
#include <cstdio>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

namespace attnlab_host {

// Launch geometry as host.rs passes it (#[repr(C)] HostLaunch).
struct Launch {
    unsigned grid[3];
    unsigned block[3];
    unsigned shared_bytes;
    unsigned workers;
};

}  // namespace attnlab_host

extern "C" int attnlab_host_run(const attnlab_host::Launch* l, void (*body)(void*), void* ctx, char* err,
                                unsigned long long errlen);

#if !defined(ATTNLAB_HOST_RUNTIME)
namespace attnlab_host {

// Argument kinds as host.rs passes them (Arg's variants).
enum ArgKind : unsigned { kPtr = 0, kI32 = 1, kI64 = 2, kF32 = 3, kStruct = 4 };

// Whether a launch argument of `kind` and `bytes` fits parameter type P
// exactly as the GPU launch would lay it out.
template <class P> bool arg_fits(unsigned kind, unsigned long long bytes) {
    switch (kind) {
        case kPtr: return std::is_pointer_v<P>;
        case kI32: return std::is_integral_v<P> && sizeof(P) == 4;
        case kI64: return std::is_integral_v<P> && sizeof(P) == 8;
        case kF32: return std::is_same_v<P, float>;
        case kStruct: return std::is_class_v<P> && sizeof(P) <= bytes && bytes < sizeof(P) + 8;
        default: return false;
    }
}

template <class... P, size_t... I>
int launch_impl(void (*f)(P...), std::index_sequence<I...>, const Launch* l, void* const* args,
                const unsigned* kinds, const unsigned long long* sizes, unsigned long long nargs, char* err,
                unsigned long long errlen) {
    if (nargs != sizeof...(P)) {
        snprintf(err, errlen, "the kernel takes %zu arguments, the launch passed %llu", sizeof...(P), nargs);
        return 1;
    }
    const bool fits[] = {true, arg_fits<std::decay_t<P>>(kinds[I], sizes[I])...};
    const size_t psize[] = {0, sizeof(std::decay_t<P>)...};
    for (size_t i = 0; i < sizeof...(P); ++i) {
        if (!fits[i + 1]) {
            static const char* names[] = {"pointer", "i32", "i64", "f32", "struct"};
            snprintf(err, errlen,
                     "argument %zu: the launch passes %s (%llu bytes), the kernel's parameter is another type of %zu "
                     "bytes",
                     i, kinds[i] < 5 ? names[kinds[i]] : "?", sizes[i], psize[i + 1]);
            return 1;
        }
    }
    std::tuple<std::decay_t<P>...> vals;
    (memcpy(&std::get<I>(vals), args[I], sizeof(std::get<I>(vals))), ...);
    auto call = [&] { f(std::get<I>(vals)...); };
    auto thunk = [](void* c) { (*static_cast<decltype(call)*>(c))(); };
    return attnlab_host_run(l, thunk, &call, err, errlen);
}

// What each generated attnlab_launch_<entry> calls: the parameter types are
// deduced from the kernel itself, so no signature is parsed or repeated.
template <class... P>
int launch(void (*f)(P...), const Launch* l, void* const* args, const unsigned* kinds,
           const unsigned long long* sizes, unsigned long long nargs, char* err, unsigned long long errlen) {
    return launch_impl(f, std::index_sequence_for<P...>{}, l, args, kinds, sizes, nargs, err, errlen);
}

}  // namespace attnlab_host
#endif
