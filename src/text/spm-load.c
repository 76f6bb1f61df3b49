/* spm-load.c: SentencePiece tokenizers from their three sources: GGUF metadata
 * (tokenizer.ggml.model = "llama", spec 8.1), a tokenizer.model file, and a Hugging Face
 * directory (formats' tern_spm_model_read_dir: tokenizer.model + added tokens). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "text/text-internal.h"

static tern_code from_pieces(tern_tokenizer **out, const tern_spm_piece *pieces, int32_t n,
                             const tern_spm_opts *o, int32_t bos, int32_t eos, bool add_bos,
                             const char *name, const char *pre, tern_status *st)
{
    tern_spm_tok *spm = NULL;
    tern_code rc = tern_spm_tok_build(&spm, pieces, n, o, name, st);
    if (rc) return rc;
    if (bos >= n || eos >= n) {
        tern_spm_tok_free(spm);
        return tern_status_set(st, TERN_EFORMAT,
                               "tokenizer: %s: bos/eos id: got %d/%d, expected ids below %d", name,
                               bos, eos, n);
    }
    return tern_tokenizer_wrap_spm(out, spm, n, bos, eos, add_bos, o->add_dummy_prefix, pre, st);
}

tern_code tern_spm_load_gguf(tern_tokenizer **out, const tern_gguf *g, tern_status *st)
{
    *out = NULL;
    const char *path = tern_gguf_path(g);
    const tern_gguf_value *tokens, *scores = NULL, *types = NULL;
    tern_code rc = tern_gguf_get_arr(g, "tokenizer.ggml.tokens", TERN_GGUF_STRING, &tokens, st);
    if (rc) return rc;
    uint64_t n = tokens->v.arr.n;
    if (n == 0 || n > (1u << 24))
        return tern_status_set(st, TERN_EFORMAT,
                               "tokenizer: %s: token count: got %llu, expected 1..16777216", path,
                               (unsigned long long)n);
    if (tern_gguf_find(g, "tokenizer.ggml.scores") &&
        (rc = tern_gguf_get_arr(g, "tokenizer.ggml.scores", TERN_GGUF_FLOAT32, &scores, st)))
        return rc;
    if (tern_gguf_find(g, "tokenizer.ggml.token_type") &&
        (rc = tern_gguf_get_arr(g, "tokenizer.ggml.token_type", TERN_GGUF_INT32, &types, st)))
        return rc;
    if ((scores && scores->v.arr.n != n) || (types && types->v.arr.n != n))
        return tern_status_set(st, TERN_EFORMAT,
                               "tokenizer: %s: scores/token_type count: got %llu/%llu, expected "
                               "%llu (the token count)",
                               path, (unsigned long long)(scores ? scores->v.arr.n : n),
                               (unsigned long long)(types ? types->v.arr.n : n),
                               (unsigned long long)n);
    tern_spm_piece *pieces = calloc((size_t)n, sizeof *pieces);
    if (!pieces) return tern_status_set(st, TERN_ENOMEM, "tokenizer: out of memory");
    bool bytes = false;
    for (uint64_t i = 0; i < n; i++) {
        tern_gguf_str s = tokens->v.arr.items[i].v.str;
        if (s.len == 0 || s.len > 65536) {
            free(pieces);
            return tern_status_set(st, TERN_EFORMAT,
                                   "tokenizer: %s: token %llu length: got %llu, expected 1..65536",
                                   path, (unsigned long long)i, (unsigned long long)s.len);
        }
        pieces[i].text = (char *)s.ptr; /* copied by the builder */
        pieces[i].len = (uint32_t)s.len;
        pieces[i].score = scores ? (float)tern_gguf_arr_float(scores, i) : 0.0f;
        int64_t ty = types ? tern_gguf_arr_int(types, i) : TERN_SPM_NORMAL;
        pieces[i].type = ty >= TERN_SPM_NORMAL && ty < TERN_SPM_TYPE_COUNT ? (tern_spm_type)ty : 0;
        bytes |= ty == TERN_SPM_BYTE;
    }
    uint32_t v;
    int32_t bos = tern_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v, NULL) ? 1 : (int32_t)v;
    int32_t eos = tern_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v, NULL) ? 2 : (int32_t)v;
    bool add_bos = true, prefix = true, b;
    if (!tern_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, NULL)) add_bos = b;
    if (!tern_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b, NULL)) prefix = b;
    /* llama.cpp's rule: a dummy space after every special token too */
    tern_spm_opts o = {
        .byte_fallback = bytes, .add_dummy_prefix = prefix, .space_after_special = true};
    rc = from_pieces(out, pieces, (int32_t)n, &o, bos, eos, add_bos, path, "spm (gguf)", st);
    free(pieces);
    return rc;
}

/* What ternpipe's SentencePiece encoder implements; anything else is refused by name. */
static tern_code supported(const tern_spm_model *m, const char *path, tern_status *st)
{
    static const char *const kinds[] = {"?", "UNIGRAM", "BPE", "WORD", "CHAR"};
    if (m->model_type != TERN_SPM_BPE)
        return tern_status_set(
            st, TERN_EUNSUPPORTED,
            "tokenizer: %s: trainer_spec.model_type: got %s (%d), expected BPE "
            "(2) (unigram/word/char segmentation is not implemented)",
            path, m->model_type >= 1 && m->model_type <= 4 ? kinds[m->model_type] : "?",
            m->model_type);
    if (m->precompiled_charsmap || (m->normalizer[0] && strcmp(m->normalizer, "identity")))
        return tern_status_set(
            st, TERN_EUNSUPPORTED,
            "tokenizer: %s: normalizer_spec: got '%s' with a %llu-byte charsmap, "
            "expected 'identity' (text normalization is not implemented)",
            path, m->normalizer, (unsigned long long)m->precompiled_charsmap);
    if (m->remove_extra_whitespaces || !m->escape_whitespaces || m->treat_whitespace_as_suffix)
        return tern_status_set(st, TERN_EUNSUPPORTED,
                               "tokenizer: %s: whitespace rules: got remove_extra_whitespaces %d, "
                               "escape_whitespaces %d, treat_whitespace_as_suffix %d, expected 0, "
                               "1, 0 (the Llama-2 settings)",
                               path, m->remove_extra_whitespaces, m->escape_whitespaces,
                               m->treat_whitespace_as_suffix);
    return TERN_OK;
}

tern_code tern_tokenizer_load_spm_file(tern_tokenizer **out, const char *path, tern_status *st)
{
    *out = NULL;
    tern_spm_model m;
    tern_code rc = tern_spm_model_read(path, &m, st);
    if (rc) return rc;
    if (!(rc = supported(&m, path, st))) {
        tern_spm_opts o = {.byte_fallback = m.byte_fallback,
                           .add_dummy_prefix = m.add_dummy_prefix,
                           .space_after_special = true};
        rc = from_pieces(out, m.pieces, m.n_pieces, &o, m.bos_id, m.eos_id, true, path,
                         "spm (tokenizer.model)", st);
    }
    tern_spm_model_free(&m);
    return rc;
}

tern_code tern_tokenizer_load_dir(tern_tokenizer **out, const char *dir, tern_status *st)
{
    *out = NULL;
    tern_spm_model m;
    tern_spm_hf hf;
    tern_code rc = tern_spm_model_read_dir(dir, &m, &hf, st);
    if (rc) return rc;
    if (!(rc = supported(&m, dir, st))) {
        /* HF's non-legacy Llama tokenizer adds no dummy space after a special token (8.2) */
        tern_spm_opts o = {.byte_fallback = m.byte_fallback,
                           .add_dummy_prefix = m.add_dummy_prefix,
                           .space_after_special = hf.legacy};
        rc = from_pieces(out, m.pieces, m.n_pieces, &o, hf.bos, hf.eos, hf.add_bos, dir, "spm (hf)",
                         st);
    }
    tern_spm_model_free(&m);
    return rc;
}
