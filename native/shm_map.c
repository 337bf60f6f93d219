/*
 * The two things the same-host shared-buffer all-reduce needs that Node lacks (worker/collectives/native.ts):
 *   map(fd, bytes)      -> ArrayBuffer over mmap(MAP_SHARED) of the file, unmapped when collected
 *   sum(dst, [s0, ...]) -> dst[i] = ((s0[i] + s1[i]) + s2[i]) + ...  (Float32Arrays, fp32 adds in this order)
 * sum reads the ranks' mapped inputs in place, one pass, in blocks that stay in L1; it is compiled
 * without -ffast-math, so every element gets exactly the additions written here, in this order
 * (vectorised across elements only), which is what makes the result equal the ring's bits.
 * And one thing the wasm backend's heap wants (worker/backend.ts, worker/heap-pages.ts):
 *   hugePages(buffer, bytes) -> 0 or errno: madvise(MADV_HUGEPAGE) over the whole 2 MiB pages of
 *   [buffer's start, start + bytes), so that the kernel backs them with transparent huge pages
 *   where its policy is "madvise" (the common default) and the tensors' TLB misses mostly go.
 */
#include <node_api.h>
#include <stdint.h>
#include <errno.h>
#include <sys/mman.h>

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "shm_map: " #call " failed"); return NULL; } } while (0)

static void unmap_cb(napi_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value map_fd(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t bytes;
  if (argc != 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &bytes) != napi_ok || bytes <= 0) {
    napi_throw_type_error(env, NULL, "map(fd, bytes): fd and a positive byte count");
    return NULL;
  }
  void *p = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    napi_throw_error(env, NULL, "map: mmap failed");
    return NULL;
  }
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, (size_t)bytes, unmap_cb, (void *)(uintptr_t)bytes, &ab) != napi_ok) {
    munmap(p, (size_t)bytes);
    napi_throw_error(env, NULL, "map: cannot wrap the mapping in an ArrayBuffer");
    return NULL;
  }
  return ab;
}

static float *floats(napi_env env, napi_value v, size_t *n) {
  napi_typedarray_type t;
  void *data;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &t, n, &data, &ab, &off) != napi_ok || t != napi_float32_array) return NULL;
  return (float *)data;
}

#define MAX_INPUTS 1024
#define BLOCK 1024

static napi_value sum(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t n = 0, m = 0;
  float *d = argc == 2 ? floats(env, argv[0], &n) : NULL;
  uint32_t k = 0;
  bool is_array = false;
  if (!d || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &k) != napi_ok || k == 0 || k > MAX_INPUTS) {
    napi_throw_type_error(env, NULL, "sum(dst, inputs): a Float32Array and 1..1024 Float32Arrays");
    return NULL;
  }
  static const float *src[MAX_INPUTS];
  for (uint32_t j = 0; j < k; j++) {
    napi_value e;
    if (napi_get_element(env, argv[1], j, &e) != napi_ok || !(src[j] = floats(env, e, &m)) || m != n) {
      napi_throw_type_error(env, NULL, "sum: every input must be a Float32Array as long as dst");
      return NULL;
    }
  }
  for (size_t a = 0; a < n; a += BLOCK) {
    size_t e = a + BLOCK < n ? a + BLOCK : n;
    for (size_t i = a; i < e; i++) d[i] = src[0][i];
    for (uint32_t j = 1; j < k; j++) {
      const float *s = src[j];
      for (size_t i = a; i < e; i++) d[i] = d[i] + s[i];
    }
  }
  return NULL;
}

#define HUGE_PAGE ((uintptr_t)2 << 20)

static napi_value huge_pages(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data = NULL;
  size_t len = 0;
  int64_t bytes = 0;
  bool is_ab = false;
  if (argc != 2 || napi_is_arraybuffer(env, argv[0], &is_ab) != napi_ok || !is_ab || napi_get_arraybuffer_info(env, argv[0], &data, &len) != napi_ok ||
      napi_get_value_int64(env, argv[1], &bytes) != napi_ok || bytes <= 0) {
    napi_throw_type_error(env, NULL, "hugePages(buffer, bytes): an ArrayBuffer and a positive byte count");
    return NULL;
  }
  int err = ENOSYS;
#ifdef MADV_HUGEPAGE
  /* Only pages wholly inside the range: the advice never reaches a neighbouring mapping's. */
  uintptr_t start = ((uintptr_t)data + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  uintptr_t end = ((uintptr_t)data + (uintptr_t)bytes) & ~(HUGE_PAGE - 1);
  err = end <= start ? 0 : madvise((void *)start, end - start, MADV_HUGEPAGE) == 0 ? 0 : errno;
#endif
  napi_value out;
  CHECK(napi_create_int32(env, err, &out));
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "map", NAPI_AUTO_LENGTH, map_fd, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "map", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "sum", NAPI_AUTO_LENGTH, sum, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "sum", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "hugePages", NAPI_AUTO_LENGTH, huge_pages, NULL, &fn) != napi_ok || napi_set_named_property(env, exports, "hugePages", fn) != napi_ok) return NULL;
  return exports;
}
