/* step_time.c - the step-time model and the chunk sizes it allows (see step_time.h). */
#include "coordinator/step_time.h"

#include <math.h>
#include <string.h>

#define DECAY 0.97 /* weight of the past per step: about the last 30 steps count */
#define RIDGE 1e-3 /* pull towards the previous fit, relative to the data's scale */

void crd_step_time_init(crd_step_time_t *m)
{
    memset(m, 0, sizeof(*m));
}

bool crd_step_time_ready(const crd_step_time_t *m)
{
    return m->n_obs >= CRD_STEP_TIME_WARMUP;
}

/* Solves a 3x3 system by Gaussian elimination with partial pivoting; false if singular. */
static bool solve3(double a[3][3], double y[3], double x[3])
{
    for (int col = 0; col < 3; col++) {
        int piv = col;
        for (int r = col + 1; r < 3; r++) {
            piv = fabs(a[r][col]) > fabs(a[piv][col]) ? r : piv;
        }
        if (fabs(a[piv][col]) < 1e-300) {
            return false;
        }
        if (piv != col) {
            for (int c = 0; c < 3; c++) {
                const double t = a[col][c];
                a[col][c] = a[piv][c];
                a[piv][c] = t;
            }
            const double t = y[col];
            y[col] = y[piv];
            y[piv] = t;
        }
        for (int r = col + 1; r < 3; r++) {
            const double f = a[r][col] / a[col][col];
            for (int c = col; c < 3; c++) {
                a[r][c] -= f * a[col][c];
            }
            y[r] -= f * y[col];
        }
    }
    for (int r = 2; r >= 0; r--) {
        double v = y[r];
        for (int c = r + 1; c < 3; c++) {
            v -= a[r][c] * x[c];
        }
        x[r] = v / a[r][r];
    }
    return true;
}

void crd_step_time_observe(crd_step_time_t *m, int64_t n_tok, int64_t ctx, double seconds)
{
    if (n_tok <= 0 || !(seconds >= 0.0) || !isfinite(seconds)) {
        return;
    }
    const double x[3] = {1.0, (double)n_tok, (double)ctx};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++) {
            m->s[i][j] = DECAY * m->s[i][j] + x[i] * x[j];
        }
        m->b[i] = DECAY * m->b[i] + x[i] * seconds;
    }
    m->n_obs++;
    /* ridge towards the previous coefficients, scaled per feature so it binds only along
     * directions the recent steps did not explore */
    double a[3][3], y[3], c[3];
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++) {
            a[i][j] = m->s[i][j];
        }
        const double r = RIDGE * (m->s[i][i] > 0.0 ? m->s[i][i] : 1.0);
        a[i][i] += r;
        y[i] = m->b[i] + r * m->c[i];
    }
    if (!solve3(a, y, c)) {
        return;
    }
    /* costs are never negative: a negative coefficient is noise in a direction the data
     * barely spans */
    for (int i = 0; i < 3; i++) {
        m->c[i] = c[i] > 0.0 && isfinite(c[i]) ? c[i] : 0.0;
    }
}

double crd_step_time_predict(const crd_step_time_t *m, int64_t n_tok, int64_t ctx)
{
    if (!crd_step_time_ready(m)) {
        return 0.0;
    }
    return m->c[0] + m->c[1] * (double)n_tok + m->c[2] * (double)ctx;
}

double crd_step_time_chunk_cost(const crd_step_time_t *m, int32_t pos, int32_t n)
{
    /* its tokens attend to pos+1 .. pos+n keys: n * pos + n (n + 1) / 2 in all */
    const double ctx = (double)n * (double)pos + 0.5 * (double)n * ((double)n + 1.0);
    return m->c[1] * (double)n + m->c[2] * ctx;
}

int32_t crd_step_time_chunk(const crd_step_time_t *m, int32_t pos, double seconds)
{
    if (seconds <= 0.0) {
        return 0;
    }
    /* c_ctx/2 n^2 + (c_tok + c_ctx (pos + 1/2)) n - seconds = 0, the positive root */
    const double qa = 0.5 * m->c[2], qb = m->c[1] + m->c[2] * ((double)pos + 0.5);
    double n;
    if (qa <= 0.0) {
        n = qb > 0.0 ? seconds / qb : 1e9;
    } else {
        n = (-qb + sqrt(qb * qb + 4.0 * qa * seconds)) / (2.0 * qa);
    }
    if (!(n >= 0.0)) {
        return 0;
    }
    return n > 1e9 ? (int32_t)1000000000 : (int32_t)n;
}
