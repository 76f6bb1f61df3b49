/* journal.c: see journal.h. */
#include "supervise/journal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct jentry {
    bool used;
    uint64_t id, order;
    int32_t *ids; /* [max_tokens]: prompt then generated */
    int32_t n_prompt, n_gen, max_new;
    tern_sampling sampling;
    tern_logit_bias bias[TERN_MAX_LOGIT_BIAS];
    int32_t stop[4], n_stop;
    char *response_format; /* owned */
    uint64_t text_sent;
} jentry;

struct tern_journal {
    pthread_mutex_t mu;
    jentry *e; /* [max_requests] */
    int32_t max_requests, max_tokens, n;
    uint64_t next_order;
};

tern_code tern_journal_create(tern_journal **out, int32_t max_requests, int32_t max_tokens,
                              tern_status *st)
{
    *out = NULL;
    if (max_requests < 1 || max_tokens < 1)
        return tern_status_set(st, TERN_EINVAL,
                               "journal: got %d requests of %d tokens, expected >= 1", max_requests,
                               max_tokens);
    tern_journal *j = calloc(1, sizeof *j);
    if (!j) return tern_status_set(st, TERN_ENOMEM, "journal: out of memory");
    j->e = calloc((size_t)max_requests, sizeof *j->e);
    j->max_requests = max_requests, j->max_tokens = max_tokens;
    pthread_mutex_init(&j->mu, NULL);
    if (!j->e) {
        tern_journal_free(j);
        return tern_status_set(st, TERN_ENOMEM, "journal: out of memory for %d requests",
                               max_requests);
    }
    *out = j;
    return TERN_OK;
}

void tern_journal_free(tern_journal *j)
{
    if (!j) return;
    if (j->e)
        for (int32_t i = 0; i < j->max_requests; i++)
            free(j->e[i].ids), free(j->e[i].response_format);
    free(j->e);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static jentry *find(tern_journal *j, uint64_t id)
{
    for (int32_t i = 0; i < j->max_requests; i++)
        if (j->e[i].used && j->e[i].id == id) return &j->e[i];
    return NULL;
}

tern_code tern_journal_add(tern_journal *j, const tern_jrequest *r, tern_status *st)
{
    if (r->n_prompt < 1 || r->max_new < 0 || (int64_t)r->n_prompt + r->max_new > j->max_tokens)
        return tern_status_set(st, TERN_ERANGE,
                               "journal: request %llu: got %d prompt + %d new tokens, expected "
                               "1..%d in all",
                               (unsigned long long)r->id, r->n_prompt, r->max_new, j->max_tokens);
    if (r->n_stop < 0 || r->n_stop > 4 || r->sampling.n_logit_bias < 0 ||
        r->sampling.n_logit_bias > TERN_MAX_LOGIT_BIAS)
        return tern_status_set(st, TERN_EINVAL,
                               "journal: request %llu: got %d stop ids, %d "
                               "biases, expected at most 4 and %d",
                               (unsigned long long)r->id, r->n_stop, r->sampling.n_logit_bias,
                               TERN_MAX_LOGIT_BIAS);
    pthread_mutex_lock(&j->mu);
    tern_code rc = TERN_OK;
    jentry *e = NULL;
    if (find(j, r->id)) {
        rc = tern_status_set(st, TERN_EINVAL, "journal: request %llu: got it twice",
                             (unsigned long long)r->id);
        goto out;
    }
    for (int32_t i = 0; i < j->max_requests && !e; i++)
        if (!j->e[i].used) e = &j->e[i];
    if (!e) {
        rc = tern_status_set(st, TERN_EBUSY, "journal: got %d open requests, expected fewer",
                             j->max_requests);
        goto out;
    }
    if (!e->ids && !(e->ids = malloc((size_t)j->max_tokens * sizeof *e->ids))) {
        rc = tern_status_set(st, TERN_ENOMEM, "journal: out of memory");
        goto out;
    }
    char *rf = r->response_format ? strdup(r->response_format) : NULL;
    if (r->response_format && !rf) {
        rc = tern_status_set(st, TERN_ENOMEM, "journal: out of memory");
        goto out;
    }
    free(e->response_format);
    e->response_format = rf;
    memcpy(e->ids, r->prompt, (size_t)r->n_prompt * sizeof *e->ids);
    e->used = true;
    e->id = r->id;
    e->order = j->next_order++;
    e->n_prompt = r->n_prompt, e->n_gen = 0, e->max_new = r->max_new;
    e->sampling = r->sampling;
    if (r->sampling.n_logit_bias > 0)
        memcpy(e->bias, r->sampling.logit_bias, (size_t)r->sampling.n_logit_bias * sizeof *e->bias);
    e->sampling.logit_bias = e->bias;
    memcpy(e->stop, r->stop, sizeof e->stop);
    e->n_stop = r->n_stop;
    e->text_sent = 0;
    j->n++;
out:
    pthread_mutex_unlock(&j->mu);
    return rc;
}

tern_code tern_journal_token(tern_journal *j, uint64_t id, int32_t token, tern_status *st)
{
    pthread_mutex_lock(&j->mu);
    tern_code rc = TERN_OK;
    jentry *e = find(j, id);
    if (!e)
        rc = tern_status_set(st, TERN_EINVAL,
                             "journal: token for request %llu: got an unknown "
                             "request",
                             (unsigned long long)id);
    else if (e->n_gen >= e->max_new)
        rc = tern_status_set(st, TERN_ERANGE,
                             "journal: request %llu: got token %d, expected at most %d",
                             (unsigned long long)id, e->n_gen + 1, e->max_new);
    else
        e->ids[e->n_prompt + e->n_gen++] = token;
    pthread_mutex_unlock(&j->mu);
    return rc;
}

void tern_journal_sent(tern_journal *j, uint64_t id, uint64_t bytes)
{
    pthread_mutex_lock(&j->mu);
    jentry *e = find(j, id);
    if (e && bytes > e->text_sent) e->text_sent = bytes;
    pthread_mutex_unlock(&j->mu);
}

void tern_journal_finish(tern_journal *j, uint64_t id)
{
    pthread_mutex_lock(&j->mu);
    jentry *e = find(j, id);
    if (e) e->used = false, j->n--;
    pthread_mutex_unlock(&j->mu);
}

int32_t tern_journal_count(tern_journal *j)
{
    pthread_mutex_lock(&j->mu);
    int32_t n = j->n;
    pthread_mutex_unlock(&j->mu);
    return n;
}

static void replay_entry(const jentry *e, void (*fn)(void *user, const tern_jreplay *r), void *user)
{
    tern_jreplay r = {.id = e->id,
                      .ids = e->ids,
                      .n_ids = e->n_prompt + e->n_gen,
                      .resumed = e->n_gen,
                      .max_new = e->max_new - e->n_gen,
                      .sampling = &e->sampling,
                      .stop = e->stop,
                      .n_stop = e->n_stop,
                      .response_format = e->response_format,
                      .text_sent = e->text_sent};
    fn(user, &r);
}

bool tern_journal_replay_one(tern_journal *j, uint64_t id,
                             void (*fn)(void *user, const tern_jreplay *r), void *user)
{
    pthread_mutex_lock(&j->mu);
    jentry *e = find(j, id);
    if (e) replay_entry(e, fn, user);
    pthread_mutex_unlock(&j->mu);
    return e != NULL;
}

int32_t tern_journal_replay(tern_journal *j, void (*fn)(void *user, const tern_jreplay *r),
                            void *user)
{
    pthread_mutex_lock(&j->mu);
    int32_t done = 0;
    /* oldest first: the order they were accepted in */
    for (uint64_t last = 0;; done++) {
        jentry *next = NULL;
        for (int32_t i = 0; i < j->max_requests; i++) {
            jentry *e = &j->e[i];
            if (e->used && (done == 0 || e->order > last) && (!next || e->order < next->order))
                next = e;
        }
        if (!next) break;
        last = next->order;
        replay_entry(next, fn, user);
    }
    pthread_mutex_unlock(&j->mu);
    return done;
}
