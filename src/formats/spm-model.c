/* spm-model.c: tokenizer.model (SentencePiece ModelProto) -> tern_spm_model. The only
 * protobuf-c user in formats; the schema is proto/sentencepiece_model.proto. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentencepiece_model.pb-c.h"
#include "ternpipe/spm.h"

#define SPM_MAX_BYTES (256u << 20)
#define SPM_MAX_PIECES (1 << 24)
#define SPM_MAX_PIECE_LEN 65536

static tern_code bad(tern_status *st, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static tern_code bad(tern_status *st, const char *name, const char *fmt, ...)
{
    char what[TERN_STATUS_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tern_status_set(st, TERN_EFORMAT, "sentencepiece: %s: %s", name, what);
}

void tern_spm_model_free(tern_spm_model *m)
{
    if (!m) return;
    for (int32_t i = 0; m->pieces && i < m->n_pieces; i++) free(m->pieces[i].text);
    free(m->pieces);
    memset(m, 0, sizeof *m);
}

static tern_code check_id(const char *name, const char *what, int32_t id, int32_t n,
                          tern_status *st)
{
    if (id < -1 || id >= n)
        return bad(st, name, "trainer_spec.%s: got %d, expected -1..%d", what, id, n - 1);
    return TERN_OK;
}

tern_code tern_spm_model_parse(const void *data, size_t len, const char *name, tern_spm_model *m,
                               tern_status *st)
{
    memset(m, 0, sizeof *m);
    Sentencepiece__ModelProto *p =
        sentencepiece__model_proto__unpack(NULL, len, (const uint8_t *)data);
    if (!p)
        return bad(st, name,
                   "got %zu bytes that do not parse as a ModelProto (truncated or corrupt), "
                   "expected a SentencePiece model",
                   len);
    tern_code rc = TERN_OK;
    if (p->n_pieces == 0 || p->n_pieces > SPM_MAX_PIECES) {
        rc = bad(st, name, "pieces: got %zu, expected 1..%d", p->n_pieces, SPM_MAX_PIECES);
        goto out;
    }
    /* a cut at a field boundary parses as a shorter model: real files always carry both
     * specs, and the trainer's vocab_size counts the pieces */
    if (!p->trainer_spec || !p->normalizer_spec) {
        rc = bad(st, name, "%s: got nothing, expected the spec (truncated file?)",
                 !p->trainer_spec ? "trainer_spec" : "normalizer_spec");
        goto out;
    }
    const Sentencepiece__TrainerSpec *ts = p->trainer_spec;
    const Sentencepiece__NormalizerSpec *ns = p->normalizer_spec;
    if (ts->has_vocab_size && ts->vocab_size != (int32_t)p->n_pieces) {
        rc = bad(st, name, "pieces: got %zu, expected trainer_spec.vocab_size %d", p->n_pieces,
                 ts->vocab_size);
        goto out;
    }
    m->n_pieces = (int32_t)p->n_pieces;
    m->pieces = calloc(p->n_pieces, sizeof *m->pieces);
    if (!m->pieces) {
        rc = tern_status_set(st, TERN_ENOMEM, "sentencepiece: %s: out of memory", name);
        goto out;
    }
    for (size_t i = 0; i < p->n_pieces; i++) {
        const Sentencepiece__ModelProto__SentencePiece *sp = p->pieces[i];
        size_t l = sp->piece ? strlen(sp->piece) : 0;
        int type = sp->has_type ? (int)sp->type : TERN_SPM_NORMAL;
        if (l == 0 || l > SPM_MAX_PIECE_LEN) {
            rc = bad(st, name, "piece %zu: length: got %zu, expected 1..%d", i, l,
                     SPM_MAX_PIECE_LEN);
            goto out;
        }
        if (type < TERN_SPM_NORMAL || type >= TERN_SPM_TYPE_COUNT) {
            rc = bad(st, name, "piece %zu: type: got %d, expected 1..6", i, type);
            goto out;
        }
        float score = sp->has_score ? sp->score : 0.0f;
        if (!isfinite(score)) {
            rc = bad(st, name, "piece %zu: score: got %g, expected a finite number", i,
                     (double)score);
            goto out;
        }
        m->pieces[i].text = malloc(l + 1);
        if (!m->pieces[i].text) {
            rc = tern_status_set(st, TERN_ENOMEM, "sentencepiece: %s: out of memory", name);
            goto out;
        }
        memcpy(m->pieces[i].text, sp->piece, l + 1);
        m->pieces[i].len = (uint32_t)l;
        m->pieces[i].score = score;
        m->pieces[i].type = (tern_spm_type)type;
    }
    m->model_type = ts->has_model_type ? (int32_t)ts->model_type : TERN_SPM_UNIGRAM;
    m->byte_fallback = ts->has_byte_fallback && ts->byte_fallback;
    m->split_digits = ts->has_split_digits && ts->split_digits;
    m->treat_whitespace_as_suffix =
        ts->has_treat_whitespace_as_suffix && ts->treat_whitespace_as_suffix;
    m->unk_id = ts->unk_id, m->bos_id = ts->bos_id, m->eos_id = ts->eos_id, m->pad_id = ts->pad_id;
    if ((rc = check_id(name, "unk_id", m->unk_id, m->n_pieces, st)) ||
        (rc = check_id(name, "bos_id", m->bos_id, m->n_pieces, st)) ||
        (rc = check_id(name, "eos_id", m->eos_id, m->n_pieces, st)) ||
        (rc = check_id(name, "pad_id", m->pad_id, m->n_pieces, st)))
        goto out;
    if (m->unk_id >= 0 && m->pieces[m->unk_id].type != TERN_SPM_UNKNOWN) {
        rc = bad(st, name, "piece %d (unk_id): type: got %d, expected 2 (UNKNOWN)", m->unk_id,
                 m->pieces[m->unk_id].type);
        goto out;
    }
    snprintf(m->normalizer, sizeof m->normalizer, "%s", ns->name ? ns->name : "");
    m->precompiled_charsmap = ns->has_precompiled_charsmap ? ns->precompiled_charsmap.len : 0;
    m->add_dummy_prefix = ns->add_dummy_prefix;
    m->remove_extra_whitespaces = ns->remove_extra_whitespaces;
    m->escape_whitespaces = ns->escape_whitespaces;
out:
    sentencepiece__model_proto__free_unpacked(p, NULL);
    if (rc) tern_spm_model_free(m);
    return rc;
}

tern_code tern_spm_model_read(const char *path, tern_spm_model *m, tern_status *st)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "rb");
    if (!f)
        return tern_status_set(st, TERN_EIO,
                               "sentencepiece: %s: open: got %s, expected a readable file", path,
                               strerror(errno));
    size_t cap = 1 << 16, n = 0;
    unsigned char *b = malloc(cap);
    while (b) {
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (n < cap) break;
        if (cap >= SPM_MAX_BYTES) {
            fclose(f);
            free(b);
            return bad(st, path, "size: got more than %u bytes, expected less", SPM_MAX_BYTES);
        }
        unsigned char *nb = realloc(b, cap * 2);
        if (!nb) free(b);
        b = nb, cap *= 2;
    }
    fclose(f);
    if (!b) return tern_status_set(st, TERN_ENOMEM, "sentencepiece: %s: out of memory", path);
    tern_code rc = tern_spm_model_parse(b, n, path, m, st);
    free(b);
    return rc;
}
