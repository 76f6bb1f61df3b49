/* tables.c: the embedding and LM-head tables of a model (lookup on the embedding rank, this
 * rank's head rows): kept as the file has them (F16, ggml Q8_0 / Q6_K), or for --head-type
 * q8_0 as int8 rows, or a Q8_0 table's own blocks held once for both. Every value is checked
 * finite; rows are read a chunk at a time, never the whole table twice in memory. */
#include <stdlib.h>
#include <string.h>

#include "model/model-internal.h"
#include "ternpipe/log.h"

/* The f16 scale of every block of a Q8_0/Q6_K table (rows [v0, v0 + n) at p) must be finite:
 * an Inf or NaN d would turn every logit of its row, and every activation after a lookup of
 * it, into NaN. */
static tern_code check_qscales(const tern_gguf *g, const char *name, tern_ggml_type type,
                               const uint8_t *p, size_t n, size_t row, int32_t v0, tern_status *st)
{
    const tern_type_traits *tr = tern_type_traits_of(type);
    const size_t blocks = row / tr->bytes;
    unsigned bad = 0;
    for (size_t b = 0; b < n * blocks; b++) {
        uint16_t h;
        memcpy(&h, p + b * tr->bytes + tr->scale_at, 2);
        bad |= (h & 0x7c00u) == 0x7c00u;
    }
    if (!bad) return TERN_OK;
    for (size_t b = 0; b < n * blocks; b++) {
        uint16_t h;
        memcpy(&h, p + b * tr->bytes + tr->scale_at, 2);
        if ((h & 0x7c00u) == 0x7c00u)
            return tern_status_set(st, TERN_EFORMAT,
                                   "model: %s: tensor '%s': got a %s block scale at row %zu "
                                   "block %zu, expected finite scales",
                                   tern_gguf_path(g), name, (h & 0x03ffu) ? "NaN" : "Inf",
                                   (size_t)v0 + b / blocks, b % blocks);
    }
    return TERN_OK;
}

/* the tensor of a table (lookup or head: F16, Q8_0 or Q6_K, n_vocab rows of d) and its
 * bytes per row, checked */
static tern_code table_tensor(const tern_model *m, const tern_gguf *g, const char *name,
                              const tern_gguf_tensor **out, uint64_t *row, tern_status *st)
{
    const tern_gguf_tensor *t = NULL;
    tern_code rc = tern_model_find(g, name, &t, st);
    if (rc ||
        (rc = tern_model_check_shape(g, t, name, (uint64_t)m->hp.d, (uint64_t)m->hp.n_vocab, st)))
        return rc;
    if (t->type != TERN_TYPE_F16 && !tern_type_is_quant(t->type))
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "model: %s: tensor '%s' type: got %s, expected F16, Q8_0 or Q6_K",
                               tern_gguf_path(g), name, tern_ggml_type_name(t->type));
    /* the parser checked the shape against the blocks already; checked again before use */
    if (!tern_ggml_nbytes(t->type, (uint64_t)m->hp.d, (uint64_t)m->hp.d, row) ||
        *row > SIZE_MAX / ((size_t)m->hp.n_vocab + 1))
        return tern_status_set(st, TERN_EFORMAT,
                               "model: %s: tensor '%s': got rows of %d elements, expected whole "
                               "%s blocks",
                               tern_gguf_path(g), name, m->hp.d, tern_ggml_type_name(t->type));
    *out = t;
    return TERN_OK;
}

#define TABLE_CHUNK_ROWS 1024 /* rows read at a time when a table is converted */

/* Rows [v0, v1) of a table as int8 rows (--head-type q8_0), read a chunk at a time (never the
 * whole table twice in memory), each row turned into floats exactly first (F16, or ggml's
 * dequantization). A row with a value that is not finite is refused by name. */
static tern_code convert_table(tern_model *m, const tern_gguf *g, const char *name, int32_t v0,
                               int32_t v1, const uint8_t *mem, tern_i8mat *i8, tern_status *st)
{
    const tern_gguf_tensor *t = NULL;
    uint64_t row;
    tern_code rc = table_tensor(m, g, name, &t, &row, st);
    if (rc) return rc;
    const int64_t d = m->hp.d;
    uint8_t *buf = malloc((size_t)TABLE_CHUNK_ROWS * (size_t)row);
    float *f = malloc((size_t)d * sizeof *f);
    if (!buf || !f) {
        rc = tern_status_set(st, TERN_ENOMEM, "model: out of memory converting '%s'", name);
        goto done;
    }
    for (int32_t r0 = v0; r0 < v1 && !rc; r0 += TABLE_CHUNK_ROWS) {
        const int32_t r1 = v1 - r0 < TABLE_CHUNK_ROWS ? v1 : r0 + TABLE_CHUNK_ROWS;
        /* mem: the whole table already loaded (the lookup copy of a tied table) */
        if (!mem && (rc = tern_gguf_tensor_read(g, t, (uint64_t)r0, (uint64_t)r1, buf, st))) break;
        for (int32_t r = r0; r < r1; r++) {
            const uint8_t *p =
                mem ? mem + (size_t)r * (size_t)row : buf + (size_t)(r - r0) * (size_t)row;
            if (t->type == TERN_TYPE_F16)
                tern_f16_to_f32((const uint16_t *)(const void *)p, f, d);
            else
                tern_dequant_row(t->type, p, d, f);
            if (!tern_i8mat_set_row(i8, r - v0, f)) {
                rc = tern_status_set(st, TERN_EFORMAT,
                                     "model: %s: tensor '%s': row %d holds a value that is not "
                                     "finite",
                                     tern_gguf_path(g), name, r);
                break;
            }
        }
    }
done:
    free(buf);
    free(f);
    return rc;
}

static tern_code load_table_i8(tern_model *m, const tern_gguf *g, const char *name, int32_t v0,
                               int32_t v1, const void *mem, tern_i8mat **out, tern_status *st)
{
    tern_status kst = {0};
    tern_code rc = tern_i8mat_new(out, v1 - v0, m->hp.d, &kst);
    if (rc) return tern_status_set(st, rc, "model: '%s': %s", name, kst.msg);
    if ((rc = convert_table(m, g, name, v0, v1, mem, *out, st))) tern_i8mat_free(*out), *out = NULL;
    return rc;
}

/* Rows [v0, v1) of a Q8_0 table as the int8 head's Q8_0-block matrix: the table's own codes
 * and scales, read a chunk at a time; a row with a scale that is not finite is refused by
 * name. */
static tern_code load_table_q8_0(tern_model *m, const tern_gguf *g, const char *name, int32_t v0,
                                 int32_t v1, tern_i8mat **out, tern_status *st)
{
    const tern_gguf_tensor *t = NULL;
    uint64_t row;
    tern_code rc = table_tensor(m, g, name, &t, &row, st);
    if (rc) return rc;
    tern_status kst = {0};
    if ((rc = tern_i8mat_new_q8_0(out, v1 - v0, m->hp.d, &kst)))
        return tern_status_set(st, rc, "model: '%s': %s", name, kst.msg);
    uint8_t *buf = malloc((size_t)TABLE_CHUNK_ROWS * (size_t)row);
    if (!buf) rc = tern_status_set(st, TERN_ENOMEM, "model: out of memory reading '%s'", name);
    for (int32_t r0 = v0; r0 < v1 && !rc; r0 += TABLE_CHUNK_ROWS) {
        const int32_t r1 = v1 - r0 < TABLE_CHUNK_ROWS ? v1 : r0 + TABLE_CHUNK_ROWS;
        if ((rc = tern_gguf_tensor_read(g, t, (uint64_t)r0, (uint64_t)r1, buf, st))) break;
        for (int32_t r = r0; r < r1; r++)
            if (!tern_i8mat_set_row_q8_0(*out, r - v0, buf + (size_t)(r - r0) * (size_t)row)) {
                rc = tern_status_set(st, TERN_EFORMAT,
                                     "model: %s: tensor '%s': row %d has a block scale that is "
                                     "not finite",
                                     tern_gguf_path(g), name, r);
                break;
            }
    }
    free(buf);
    if (rc) tern_i8mat_free(*out), *out = NULL;
    return rc;
}

/* rows [v0, v1) of a [n_vocab][d] table, kept in the file's type: F16, or ggml Q8_0 / Q6_K as
 * --token-embedding-type writes them (used by lookup and head as they are, no F16 copy) */
static tern_code load_table(tern_model *m, const tern_gguf *g, const char *name, int32_t v0,
                            int32_t v1, const void **out, tern_ggml_type *type, size_t *row_out,
                            tern_status *st)
{
    const tern_gguf_tensor *t = NULL;
    uint64_t row = 0;
    tern_code rc = table_tensor(m, g, name, &t, &row, st);
    if (rc) return rc;
    const bool quant = tern_type_is_quant(t->type);
    const size_t bytes = (size_t)(v1 - v0) * (size_t)row;
    uint8_t *p = tern_model_walloc(m, bytes ? bytes : 1);
    if (!p) return tern_status_set(st, TERN_ENOMEM, "model: out of memory for '%s'", name);
    /* straight into the NUMA-local copy: from a file piece by piece, its pages dropped as it
     * goes (the 2B-4T embedding is 657 MB in F16: held twice it would be the peak RSS); from a
     * directory converted row by row */
    if ((rc = tern_gguf_tensor_read(g, t, (uint64_t)v0, (uint64_t)v1, p, st))) return rc;
    if (quant)
        rc = check_qscales(g, name, t->type, p, (size_t)(v1 - v0), (size_t)row, v0, st);
    else
        rc = tern_model_check_f16(g, name, (const uint16_t *)(const void *)p, bytes / 2,
                                  (uint64_t)v0 * (uint64_t)m->hp.d, st);
    if (rc) return rc;
    *out = p;
    *type = t->type;
    *row_out = (size_t)row;
    return TERN_OK;
}

/* The tables of m's rank (m->has_embed, m->has_head, the head rows and type set). */
tern_code tern_model_load_tables(tern_model *m, const tern_gguf *g, tern_status *st)
{
    const tern_hparams *hp = &m->hp;
    tern_code rc = TERN_OK;
    bool untied = tern_gguf_find_tensor(g, "output.weight") != NULL;
    const int32_t nh = m->head_v1 - m->head_v0;
    const bool q8 = m->head_type == TERN_HEAD_Q8_0;
    const char *head_name = untied ? "output.weight" : "token_embd.weight";
    /* --head-type q8_0 on a Q8_0 table: its blocks serve the head (and, tied, the lookup) as
     * they are; a tied table on the lookup rank is then held once */
    const bool qblocks = m->has_head && nh > 0 && tern_head_keeps_q8_0(hp, m->head_type);
    if (qblocks && m->has_embed && !untied && m->head_v0 % 16 == 0) {
        tern_status kst = {0};
        if ((rc = load_table_q8_0(m, g, head_name, 0, hp->n_vocab, &m->qembd, st))) return rc;
        if ((rc = tern_i8mat_view(&m->qhead, m->qembd, m->head_v0, nh, &kst)))
            return tern_status_set(st, rc, "model: head: %s", kst.msg);
        m->weight_bytes += tern_i8mat_bytes(m->qembd);
        m->bytes_per_token += tern_i8mat_bytes(m->qhead);
        tern_log(TERN_LOG_INFO, "model: head and lookup: the Q8_0 table's blocks with int8 "
                                "activations (--head-type q8_0), one copy");
    } else if (m->has_embed) {
        /* lookup reads the table as it is with any head type: an int8 (or Q8_0) lookup table
         * moves the 2B-4T fixture's logits past bitnet.cpp's tolerance (0.053 R > 0.05 R) */
        if ((rc = load_table(m, g, "token_embd.weight", 0, hp->n_vocab, &m->embd, &m->embd_type,
                             &m->embd_row, st)))
            return rc;
    }
    if (m->qembd) {
        /* loaded with the lookup above */
    } else if (qblocks) {
        if ((rc = load_table_q8_0(m, g, head_name, m->head_v0, m->head_v1, &m->qhead, st)))
            return rc;
        m->weight_bytes += tern_i8mat_bytes(m->qhead);
        m->bytes_per_token += tern_i8mat_bytes(m->qhead);
        tern_log(TERN_LOG_INFO,
                 "model: head: the Q8_0 table's blocks with int8 activations (--head-type q8_0)");
    } else if (m->has_head && nh > 0 && q8) {
        if ((rc = load_table_i8(m, g, head_name, m->head_v0, m->head_v1, untied ? NULL : m->embd,
                                &m->qhead, st)))
            return rc;
        m->weight_bytes += tern_i8mat_bytes(m->qhead);
        m->bytes_per_token += tern_i8mat_bytes(m->qhead);
        tern_log(TERN_LOG_INFO, "model: head: int8 rows with int8 activations (--head-type q8_0)");
    } else if (m->has_head && nh > 0) {
        if (untied || !m->has_embed) {
            /* only this rank's rows: of output.weight, or of the tied embedding */
            if ((rc = load_table(m, g, untied ? "output.weight" : "token_embd.weight", m->head_v0,
                                 m->head_v1, &m->head, &m->head_wtype, &m->head_row, st)))
                return rc;
        } else {
            m->head = (const uint8_t *)m->embd + (size_t)m->head_v0 * m->embd_row;
            m->head_wtype = m->embd_type, m->head_row = m->embd_row;
        }
        m->bytes_per_token += (uint64_t)nh * (uint64_t)m->head_row;
    }
    return TERN_OK;
}
