/* test_safetensors.c: the safetensors reader and config.json.
 *
 * A made file (every dtype class, a scalar, an empty tensor, metadata) is read back value for
 * value; every truncation of it and a list of targeted header corruptions must give one-line
 * errors naming the file (and the tensor where there is one); a sharded checkpoint with its
 * index opens as one and index/file disagreements are refused. The fixtures are read against
 * independent facts: tiny-2b4t-hf holds the same F16 embedding and F32 norms, byte for byte,
 * as tiny-2b4t/model.gguf (written by another tool); the configs give the values their README
 * documents. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "ternpipe/gguf.h"
#include "ternpipe/safetensors.h"

/* a file from a header (padded with spaces to a multiple of 8, as writers do) and data */
static unsigned char *make(const char *header, const void *data, size_t dlen, size_t *len)
{
    size_t hl = strlen(header), pad = (8 - hl % 8) % 8;
    *len = 8 + hl + pad + dlen;
    unsigned char *b = malloc(*len);
    uint64_t n = hl + pad;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, header, hl);
    memset(b + 8 + hl, ' ', pad);
    if (dlen) memcpy(b + 8 + hl + pad, data, dlen);
    return b;
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fwrite(p, 1, n, f) == n);
    fclose(f);
}

static bool one_line(const char *m, const char *prefix)
{
    return !strncmp(m, prefix, strlen(prefix)) && strstr(m, ": got ") && strstr(m, ", expected ") &&
           !strchr(m, '\n');
}

/* The made file's data: a F32 [2][3], b F16 [4], c BF16 [2][2], d U8 [3][4], e I64 scalar,
 * z F32 [0][5] (empty). */
static const char *HDR = "{\"__metadata__\":{\"format\":\"pt\",\"who\":\"test\"},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                         "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                         "\"c\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[32,40]},"
                         "\"d\":{\"dtype\":\"U8\",\"shape\":[3,4],\"data_offsets\":[40,52]},"
                         "\"e\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[52,60]},"
                         "\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[60,60]}}";

static unsigned char DATA[60];

static void fill_data(void)
{
    float a[6] = {1.5f, -2.0f, 0.25f, 3.0f, -0.125f, 100.0f};
    memcpy(DATA, a, 24);
    uint16_t b[4] = {0x3c00, 0xc000, 0x3800, 0x0001}; /* 1, -2, 0.5, 2^-24 */
    memcpy(DATA + 24, b, 8);
    uint16_t c[4] = {0x3f80, 0xbf00, 0x4040, 0x0000}; /* 1, -0.5, 3, 0 */
    memcpy(DATA + 32, c, 8);
    for (int i = 0; i < 12; i++) DATA[40 + i] = (unsigned char)(i * 17);
    int64_t e = -7;
    memcpy(DATA + 52, &e, 8);
}

static void test_made_file(void)
{
    size_t len;
    unsigned char *f = make(HDR, DATA, sizeof DATA, &len);
    char path[512];
    snprintf(path, sizeof path, "%s/made.safetensors", tern_test_tmpdir());
    write_file(path, f, len);
    for (int via = 0; via < 2; via++) {
        tern_st *s = NULL;
        tern_status st = {0};
        tern_code rc =
            via ? tern_st_open_memory(&s, f, len, "made", &st) : tern_st_open(&s, path, &st);
        CHECKF(rc == TERN_OK, "%s", st.msg);
        if (rc) continue;
        CHECK(tern_st_n_tensors(s) == 6 && tern_st_n_files(s) == 1);
        const char *names = "abcdez";
        for (int i = 0; i < 6; i++) CHECK(tern_st_tensor_at(s, (uint64_t)i)->name[0] == names[i]);
        CHECK(tern_st_tensor_at(s, 6) == NULL && tern_st_find(s, "y") == NULL);
        CHECK(!strcmp(tern_st_metadata(s, "format"), "pt") && !tern_st_metadata(s, "x"));
        const tern_st_tensor *a = tern_st_find(s, "a"), *b = tern_st_find(s, "b"),
                             *c = tern_st_find(s, "c"), *d = tern_st_find(s, "d"),
                             *e = tern_st_find(s, "e"), *z = tern_st_find(s, "z");
        CHECK(a && b && c && d && e && z);
        if (!a || !b || !c || !d || !e || !z) {
            tern_st_close(s);
            continue;
        }
        CHECK(a->dtype == TERN_ST_F32 && a->n_dims == 2 && a->shape[0] == 2 && a->shape[1] == 3);
        CHECK(a->n_elements == 6 && a->nbytes == 24);
        CHECK(e->n_dims == 0 && e->n_elements == 1 && e->nbytes == 8);
        CHECK(z->n_elements == 0 && z->nbytes == 0 && z->shape[0] == 0);
        CHECK(d->dtype == TERN_ST_U8 && ((const unsigned char *)d->data)[11] == 187);
        int64_t ev;
        memcpy(&ev, e->data, 8);
        CHECK(ev == -7);
        float v[6];
        tern_st_read_f32(a, 0, 6, v);
        CHECK(v[0] == 1.5f && v[1] == -2.0f && v[5] == 100.0f);
        tern_st_read_f32(b, 0, 4, v);
        CHECK(v[0] == 1.0f && v[1] == -2.0f && v[2] == 0.5f && v[3] == 0x1p-24f);
        tern_st_read_f32(c, 1, 3, v);
        CHECK(v[0] == -0.5f && v[1] == 3.0f && v[2] == 0.0f);
        CHECK(!strcmp(tern_st_dtype_name(TERN_ST_BF16), "BF16") &&
              tern_st_dtype_size(TERN_ST_F64) == 8);
        if (!via) {
            CHECK(a->offset == len - sizeof DATA && !strcmp(tern_st_file_path(s, 0), path));
            tern_st_drop_pages(s, a); /* data stays readable */
            tern_st_read_f32(a, 5, 1, v);
            CHECK(v[0] == 100.0f);
        }
        tern_st_close(s);
    }
    tern_st_close(NULL);
    free(f);
}

static void test_truncations(void)
{
    size_t len;
    unsigned char *f = make(HDR, DATA, sizeof DATA, &len);
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        unsigned char *p = malloc(n ? n : 1);
        memcpy(p, f, n);
        tern_st *s = NULL;
        tern_status st = {0};
        tern_code rc = tern_st_open_memory(&s, p, n, "cut", &st);
        bool ok = rc == TERN_EFORMAT && !s && one_line(st.msg, "safetensors: cut: ");
        if (!ok && bad++ < 5) fprintf(stderr, "truncated to %zu: rc %d '%s'\n", n, rc, st.msg);
        tern_st_close(s);
        free(p);
    }
    CHECKF(bad == 0, "%d of %zu truncations not refused with a one-line error", bad, len);
    free(f);
}

typedef struct corruption {
    const char *from, *to; /* replaced once in HDR */
    const char *want;      /* in the message */
} corruption;

static void test_corruptions(void)
{
    static const corruption cs[] = {
        {"\"dtype\":\"F16\"", "\"dtype\":\"F33\"", "tensor 'b': dtype: got 'F33'"},
        {"\"dtype\":\"F16\"", "\"dtype\":16", "tensor 'b': dtype: got a number"},
        {"\"shape\":[2,3]", "\"shape\":[-2,3]", "tensor 'a': shape[0]: got a negative"},
        {"\"shape\":[2,3]", "\"shape\":[2.5,3]",
         "tensor 'a': shape[0]: got a negative, fractional"},
        {"\"shape\":[2,3]", "\"shape\":[2,\"3\"]", "tensor 'a': shape[1]: got a string"},
        {"\"shape\":[2,3]", "\"shape\":[1,1,1,1,1,1,1,1,6]", "tensor 'a': shape: got 9 dims"},
        {"\"shape\":[2,3]", "\"shape\":[3,3]",
         "tensor 'a': data_offsets: got 24 bytes, expected 36"},
        {"\"shape\":[2,3]", "\"shape\":[1099511627776,1099511627776]",
         "tensor 'a': shape: got more elements"},
        {"\"shape\":[2,3]", "\"shape\":{}", "tensor 'a': shape: got an object"},
        {"[0,24]", "[24,0]", "tensor 'a': data_offsets: got [24, 0]"},
        {"[0,24]", "[0,24,0]", "tensor 'a': data_offsets: got another array"},
        {"[0,24]", "[0,\"24\"]", "tensor 'a': data_offsets"},
        {"[60,60]", "[60,61]",
         "tensor 'z': data_offsets: got [60, 61], expected begin <= end <= 60"},
        {"[24,32]", "[20,28]", "tensor 'b': data_offsets begin: got 20, expected 24 (an overlap"},
        {"[24,32]", "[26,34]", "tensor 'b': data_offsets begin: got 26, expected 24 (a hole"},
        {"\"a\":{\"dtype\":\"F32\",", "\"a\":{", "tensor 'a': dtype: got nothing"},
        {"\"a\":{\"dtype\":\"F32\",", "\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",",
         "tensor 'a': key 'dtype': got it twice"},
        {"\"a\":{\"dtype\":\"F32\",", "\"a\":{\"dtype\":\"F32\",\"extra\":1,",
         "tensor 'a': key 'extra': got an unknown key"},
        {"\"b\":{", "\"a\":{", "tensor 'a': got it twice"},
        {"\"e\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[52,60]}", "\"e\":[1]",
         "tensor 'e': got an array, expected an object"},
        {"\"who\":\"test\"", "\"who\":3", "__metadata__ 'who': got a number"},
        {"{\"__metadata__\":{", "{\"__metadata__\":7,\"m\":{", "__metadata__: got a number"},
        {"\"a\":{", "\"\":{", "tensor name length: got 0"},
        {"\"b\":{", "\"b\":[{", "header: got invalid JSON"},
        {"{\"__metadata__\"", "[{\"__metadata__\"", "header: got first byte 0x5b"},
    };
    size_t ncs = sizeof cs / sizeof cs[0];
    for (size_t i = 0; i < ncs; i++) {
        const char *at = strstr(HDR, cs[i].from);
        CHECKF(at != NULL, "corruption %zu: '%s' not in the header", i, cs[i].from);
        if (!at) continue;
        char h[2048];
        snprintf(h, sizeof h, "%.*s%s%s", (int)(at - HDR), HDR, cs[i].to, at + strlen(cs[i].from));
        size_t len;
        unsigned char *f = make(h, DATA, sizeof DATA, &len);
        tern_st *s = NULL;
        tern_status st = {0};
        tern_code rc = tern_st_open_memory(&s, f, len, "bad", &st);
        CHECKF(rc != TERN_OK && !s, "corruption %zu accepted", i);
        CHECKF(one_line(st.msg, "safetensors: bad: ") && strstr(st.msg, cs[i].want),
               "corruption %zu: '%s', expected it to contain '%s'", i, st.msg, cs[i].want);
        tern_st_close(s);
        free(f);
    }
    /* byte-level ones: header length, NUL, trailing bytes, data after the last tensor */
    /* a trailing space makes the byte before the data padding, whatever HDR's length */
    char hs[1024];
    snprintf(hs, sizeof hs, "%s ", HDR);
    size_t len;
    unsigned char *f = make(hs, DATA, sizeof DATA, &len);
    struct {
        size_t at;
        unsigned char v;
        const char *want;
    } bytes[] = {
        {7, 0x01, "header length: got 72057594037928"}, /* 2^56 + ...: past the file */
        {12, 0x00, "header: got a NUL byte at 4"},
        {len - sizeof DATA - 1, 'x', "header: got 0x78 at byte"},
    };
    for (size_t i = 0; i < sizeof bytes / sizeof bytes[0]; i++) {
        unsigned char *p = malloc(len);
        memcpy(p, f, len);
        p[bytes[i].at] = bytes[i].v;
        tern_st *s = NULL;
        tern_status st = {0};
        CHECK(tern_st_open_memory(&s, p, len, "bad", &st) == TERN_EFORMAT && !s);
        CHECKF(one_line(st.msg, "safetensors: bad: ") && strstr(st.msg, bytes[i].want),
               "byte corruption %zu: '%s'", i, st.msg);
        free(p);
    }
    {
        /* bytes after the last tensor */
        unsigned char *p = malloc(len + 3);
        memcpy(p, f, len);
        memset(p + len, 0, 3);
        tern_st *s = NULL;
        tern_status st = {0};
        CHECK(tern_st_open_memory(&s, p, len + 3, "bad", &st) == TERN_EFORMAT);
        CHECKF(strstr(st.msg, "data section: got 63 bytes, expected 60"), "'%s'", st.msg);
        free(p);
    }
    /* no tensors at all: only an empty data section is consistent */
    unsigned char *e = make("{}", "xyz", 3, &len);
    tern_st *s = NULL;
    tern_status st = {0};
    CHECK(tern_st_open_memory(&s, e, len, "bad", &st) == TERN_EFORMAT);
    CHECKF(strstr(st.msg, "data section: got 3 bytes and no tensors"), "'%s'", st.msg);
    free(e);
    e = make("{}", NULL, 0, &len);
    CHECK(tern_st_open_memory(&s, e, len, "empty", &st) == TERN_OK && tern_st_n_tensors(s) == 0);
    tern_st_close(s);
    free(e);
    free(f);
    /* files that are not there or not regular */
    CHECK(tern_st_open(&s, "/nonexistent/x.safetensors", &st) == TERN_EIO && !s);
    CHECKF(one_line(st.msg, "safetensors: /nonexistent/x.safetensors: open: "), "'%s'", st.msg);
    CHECK(tern_st_open(&s, tern_test_tmpdir(), &st) == TERN_EIO);
    CHECKF(strstr(st.msg, "got a directory, expected a regular file"), "'%s'", st.msg);
}

static void test_shards(void)
{
    char dir[512], p[600];
    snprintf(dir, sizeof dir, "%s/sharded", tern_test_tmpdir());
    CHECK(mkdir(dir, 0700) == 0);
    float x[4] = {1, 2, 3, 4}, y[2] = {5, 6};
    size_t l1, l2;
    unsigned char *s1 =
        make("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", x, 16, &l1);
    unsigned char *s2 = make("{\"y\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]},"
                             "\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,8]}}",
                             y, 8, &l2);
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    write_file(p, s1, l1);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    write_file(p, s2, l2);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    const char *good = "{\"metadata\":{\"total_size\":24},\"weight_map\":{"
                       "\"x\":\"model-00001-of-00002.safetensors\","
                       "\"y\":\"model-00002-of-00002.safetensors\","
                       "\"w\":\"model-00002-of-00002.safetensors\"}}";
    write_file(p, good, strlen(good));
    tern_st *s = NULL;
    tern_status st = {0};
    CHECKF(tern_st_open_dir(&s, dir, &st) == TERN_OK, "%s", st.msg);
    if (s) {
        CHECK(tern_st_n_files(s) == 2 && tern_st_n_tensors(s) == 3);
        const tern_st_tensor *ty = tern_st_find(s, "y"), *tx = tern_st_find(s, "x");
        CHECK(ty && tx && ty->file == 1 && tx->file == 0);
        float v[2];
        if (ty) tern_st_read_f32(ty, 0, 2, v);
        CHECK(ty && v[0] == 5.0f && v[1] == 6.0f);
        tern_st_close(s);
    }
    struct {
        const char *index, *want;
    } bad[] = {
        {"{\"weight_map\":{\"x\":\"model-00002-of-00002.safetensors\","
         "\"y\":\"model-00002-of-00002.safetensors\",\"w\":\"model-00002-of-00002.safetensors\"}}",
         "index: tensor 'x': got it in no shard"},
        {"{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
         "\"y\":\"model-00001-of-00002.safetensors\",\"w\":\"model-00002-of-00002.safetensors\"}}",
         "index: tensor 'y': got it in model-00002-of-00002.safetensors, expected it in "
         "model-00001"},
        {"{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
         "\"y\":\"model-00002-of-00002.safetensors\"}}",
         "tensor 'w': got it in the shard, expected it in the index"},
        {"{\"weight_map\":{\"x\":\"../model-00001-of-00002.safetensors\"}}",
         "index: tensor 'x': file: got '../model-00001"},
        {"{\"weight_map\":{\"x\":7}}", "index: tensor 'x': file: got a number"},
        {"{\"weight_map\":[]}", "index: weight_map: got an array"},
        {"{\"weight_map\":{}}", "index: weight_map: got no tensors"},
        {"{\"weight_map\":{\"x\":\"missing.safetensors\"}}", "missing.safetensors: open: got"},
        {"[", "index: got invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(p, bad[i].index, strlen(bad[i].index));
        CHECK(tern_st_open_dir(&s, dir, &st) != TERN_OK && !s);
        CHECKF(strstr(st.msg, bad[i].want) && strstr(st.msg, ", expected ") &&
                   !strchr(st.msg, '\n'),
               "index %zu: '%s', expected '%s'", i, st.msg, bad[i].want);
    }
    /* the same tensor in two shards */
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    write_file(p, s1, l1);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_file(p, good, strlen(good));
    CHECK(tern_st_open_dir(&s, dir, &st) == TERN_EFORMAT);
    CHECKF(strstr(st.msg, "tensor 'x': got it twice (in two shards)"), "'%s'", st.msg);
    /* no index: model.safetensors, which is missing here */
    unlink(p);
    CHECK(tern_st_open_dir(&s, dir, &st) == TERN_EIO);
    CHECKF(strstr(st.msg, "sharded/model.safetensors: open: got"), "'%s'", st.msg);
    free(s1), free(s2);
}

/* tiny-2b4t-hf re-expresses tiny-2b4t/model.gguf (another writer): same F16 embedding and
 * F32 norms, byte for byte */
static void test_fixture_2b4t(void)
{
    if (!tern_test_need("reference/tiny-2b4t-hf/model.safetensors") ||
        !tern_test_need("reference/tiny-2b4t/model.gguf"))
        return;
    tern_st *s = NULL;
    tern_gguf *g = NULL;
    tern_status st = {0};
    CHECKF(tern_st_open_dir(&s, tern_test_fixture("reference/tiny-2b4t-hf"), &st) == TERN_OK, "%s",
           st.msg);
    CHECK(tern_gguf_open(&g, tern_test_fixture("reference/tiny-2b4t/model.gguf"), &st) == TERN_OK);
    if (!s || !g) goto out;
    CHECK(tern_st_n_tensors(s) == 56);
    CHECK(!strcmp(tern_st_metadata(s, "format"), "pt"));
    const tern_st_tensor *e = tern_st_find(s, "model.embed_tokens.weight");
    const tern_gguf_tensor *ge = tern_gguf_find_tensor(g, "token_embd.weight");
    CHECK(e && ge && e->dtype == TERN_ST_F16 && e->shape[0] == ge->ne[1] &&
          e->shape[1] == ge->ne[0]);
    CHECK(e && ge && e->nbytes == ge->nbytes && !memcmp(e->data, ge->data, e->nbytes));
    const tern_st_tensor *n = tern_st_find(s, "model.layers.2.mlp.ffn_sub_norm.weight");
    const tern_gguf_tensor *gn = tern_gguf_find_tensor(g, "blk.2.ffn_sub_norm.weight");
    CHECK(n && gn && n->dtype == TERN_ST_F32 && n->nbytes == gn->nbytes &&
          !memcmp(n->data, gn->data, n->nbytes));
    const tern_st_tensor *q = tern_st_find(s, "model.layers.0.self_attn.q_proj.weight");
    const tern_st_tensor *qs = tern_st_find(s, "model.layers.0.self_attn.q_proj.weight_scale");
    CHECK(q && q->dtype == TERN_ST_U8 && q->n_dims == 2 && q->shape[0] == 64 && q->shape[1] == 256);
    CHECK(qs && qs->n_elements == 1 && (qs->dtype == TERN_ST_F32 || qs->dtype == TERN_ST_BF16));
    /* the I2_S scale at byte n/4 of the GGUF blob is the HF weight_scale */
    const tern_gguf_tensor *gq = tern_gguf_find_tensor(g, "blk.0.attn_q.weight");
    if (qs && gq) {
        float a, b;
        tern_st_read_f32(qs, 0, 1, &a);
        memcpy(&b, (const char *)gq->data + 256 * 256 / 4, 4);
        CHECK(a == b);
    }
out:
    tern_st_close(s);
    tern_gguf_close(g);
}

static void test_fixture_large(void)
{
    if (!tern_test_need("reference/tiny-large-hf/model.safetensors")) return;
    tern_st *s = NULL;
    tern_status st = {0};
    CHECKF(tern_st_open_dir(&s, tern_test_fixture("reference/tiny-large-hf"), &st) == TERN_OK, "%s",
           st.msg);
    if (!s) return;
    CHECK(tern_st_n_tensors(s) == 35);
    int f32 = 0;
    for (uint64_t i = 0; i < tern_st_n_tensors(s); i++)
        f32 += tern_st_tensor_at(s, i)->dtype == TERN_ST_F32;
    CHECK(f32 == 35);
    const tern_st_tensor *e = tern_st_find(s, "model.embed_tokens.weight");
    CHECK(e && e->shape[0] == 2002 && e->shape[1] == 256);
    const tern_st_tensor *d = tern_st_find(s, "model.layers.1.mlp.down_proj.weight");
    CHECK(d && d->shape[0] == 256 && d->shape[1] == 512);
    CHECK(tern_st_find(s, "model.layers.2.self_attn.inner_attn_ln.weight") != NULL);
    CHECK(tern_st_find(s, "lm_head.weight") == NULL);
    tern_st_close(s);
}

static void test_config(void)
{
    tern_hf_config c;
    tern_status st = {0};
    if (tern_test_need("reference/tiny-large-hf/config.json")) {
        CHECKF(tern_hf_config_read(tern_test_fixture("reference/tiny-large-hf/config.json"), &c,
                                   &st) == TERN_OK,
               "%s", st.msg);
        CHECK(!strcmp(c.architecture, "BitnetForCausalLM") && !strcmp(c.model_type, "llama"));
        CHECK(c.hidden_size == 256 && c.intermediate_size == 512 && c.num_hidden_layers == 3);
        CHECK(c.num_attention_heads == 4 && c.num_key_value_heads == 4 && c.head_dim == 0);
        CHECK(!strcmp(c.hidden_act, "silu") && c.rms_norm_eps == 1e-5f && c.rope_theta == 10000.0f);
        CHECK(c.vocab_size == 2002 && c.bos_token_id == 1 && c.eos_token_id == 2 &&
              c.pad_token_id == 2000);
        CHECK(c.tie_word_embeddings && c.max_position_embeddings == 256);
        CHECK(!strcmp(c.torch_dtype, "float16"));
    }
    if (tern_test_need("reference/tiny-2b4t-hf/config.json")) {
        CHECKF(tern_hf_config_read(tern_test_fixture("reference/tiny-2b4t-hf/config.json"), &c,
                                   &st) == TERN_OK,
               "%s", st.msg);
        CHECK(!strcmp(c.architecture, "BitNetForCausalLM") && !strcmp(c.hidden_act, "relu2"));
        CHECK(c.num_key_value_heads == 1 && c.rope_theta == 500000.0f &&
              c.intermediate_size == 768);
        CHECK(c.bos_token_id == 1014 && c.eos_token_id == 1015 && c.pad_token_id == -1);
    }
    const char *base = "{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":2,\"vocab_size\":100";
    struct {
        const char *extra, *want;
        tern_code rc;
    } cs[] = {
        {"}", NULL, TERN_OK},
        {",\"eos_token_id\":[5,6]}", NULL, TERN_OK},
        {",\"max_position_embeddings\":\"64\"}",
         "key 'max_position_embeddings': got a string, expected an integer", TERN_EFORMAT},
        {",\"head_dim\":2.5}", "key 'head_dim': got 2.5", TERN_EFORMAT},
        {",\"hidden_size\":32}", "key 'hidden_size': got it twice, expected it once", TERN_EFORMAT},
        {",\"num_key_value_heads\":0}", "key 'num_key_value_heads': got 0", TERN_EFORMAT},
        {",\"rms_norm_eps\":-1}", "key 'rms_norm_eps': got -1, expected a number in (0, 1)",
         TERN_EFORMAT},
        {",\"rope_theta\":\"x\"}", "key 'rope_theta': got a string", TERN_EFORMAT},
        {",\"hidden_act\":1}", "key 'hidden_act': got a number, expected a string", TERN_EFORMAT},
        {",\"tie_word_embeddings\":1}", "key 'tie_word_embeddings': got a number", TERN_EFORMAT},
        {",\"rope_scaling\":{\"type\":\"linear\"}}", "key 'rope_scaling': got an object",
         TERN_EUNSUPPORTED},
        {",\"architectures\":\"x\"}", "key 'architectures': got a string", TERN_EFORMAT},
        {",}", "got invalid JSON, expected a JSON object", TERN_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        char j[512];
        snprintf(j, sizeof j, "%s%s", base, cs[i].extra);
        tern_code rc = tern_hf_config_parse(j, strlen(j), "cfg", &c, &st);
        CHECKF(rc == cs[i].rc, "config %zu: rc %d '%s'", i, rc, st.msg);
        if (cs[i].want)
            CHECKF(one_line(st.msg, "config: cfg: ") && strstr(st.msg, cs[i].want),
                   "config %zu: '%s'", i, st.msg);
    }
    CHECK(tern_hf_config_parse(base, strlen(base), "cfg", &c, &st) == TERN_EFORMAT);
    const char *nokey = "{\"hidden_size\":64}";
    CHECK(tern_hf_config_parse(nokey, strlen(nokey), "cfg", &c, &st) == TERN_EFORMAT);
    CHECKF(strstr(st.msg, "key 'intermediate_size': got nothing, expected the key"), "'%s'",
           st.msg);
    char j[512];
    snprintf(j, sizeof j, "%s,\"eos_token_id\":[5,6]}", base);
    CHECK(tern_hf_config_parse(j, strlen(j), "cfg", &c, &st) == TERN_OK && c.eos_token_id == 5 &&
          c.num_key_value_heads == 2 && !strcmp(c.hidden_act, "silu") && c.rope_theta == 10000.0f);
}

int main(void)
{
    fill_data();
    test_made_file();
    test_truncations();
    test_corruptions();
    test_shards();
    test_fixture_2b4t();
    test_fixture_large();
    test_config();
    return tern_test_finish("test_safetensors");
}
