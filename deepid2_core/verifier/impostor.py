"""The model's open-set impostor statistics: how high a probe of someone *not*
in a gallery scores against its best match in that gallery.

`deepid2 fit-verifier` simulates whole galleries from its training people
(`ImpostorScores.measure`): for gallery sizes K on a log grid
(GALLERY_SIZES, capped by the people available) and n = 1..MAX_IMAGES
enrollment images per person, it draws galleries of K random training people,
each the mean feature of n random images of theirs (as `enroll` makes them),
and probes (one image of a person outside that gallery), and records the
probe's MAX Joint Bayesian score over the K means: the score `identify`
compares with the threshold. The K scores of one probe share its own term
z'Az and its position, so they are strongly correlated; treating them as
independent (format 1) set thresholds about 3x too cautious. The upper tail
of each max distribution is kept as quantiles: for exceedance probabilities p
on a log grid, the score that the max of a share p of the trials reaches.
They go in the verifier file's metadata "impostor_scores" as JSON
(docs/verifier_model.md): the C++ reader refuses unknown tensors, not unknown
metadata keys.

`enroll` sets the threshold for a gallery with n_k images of person k: the
lowest t with P(max >= t) <= FAR. For K people of n images, P(t) is read
from the tables: in t, log p linear between quantiles (beyond the last one,
along the last segment's slope); in K, log H linear in log K, where
H = -log(1 - P) (independent scores give H proportional to K; correlated ones
grow more slowly, and past the largest K measured the last slope, at most 1,
goes on). A gallery of mixed counts takes H = sum_n (K_n / K) H_n(K) at its
size K: exact for independent scores and for counts that score alike. Counts
above MAX_IMAGES use MAX_IMAGES's tables (means of more images move little).
"""
import json

import numpy as np

FORMAT = "deepid2-impostor/2"
OLD_FORMATS = ("deepid2-impostor/1",)   # single impostor pairs: enroll falls back
GALLERY_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
MAX_IMAGES = 5             # galleries of means of 1..5 enrollment images are simulated
DEFAULT_TRIALS = 20000     # (gallery, outsider probe) trials per gallery size and n
DEFAULT_PAIRS = DEFAULT_TRIALS   # the name Verifier.fit passes the count by
PROBES_PER_GALLERY = 100   # outsider probes scored against each simulated gallery
MIN_TAIL_TRIALS = 10       # a quantile rests on at least this many trials above it
OUTSIDE_SHARE = 0.2        # at least this share of the people stays out of each gallery


def tail_grid(n_trials):
    """Exceedance probabilities 0.5 down to the smallest that MIN_TAIL_TRIALS
    of n_trials resolve, 1-2-5 per decade."""
    out, decade = [], 1.0
    while True:
        for s in (0.5, 0.2, 0.1):
            p = s * decade
            if p * n_trials < MIN_TAIL_TRIALS:
                return np.array(out)
            out.append(p)
        decade /= 10


def distinct_offsets(rng, sizes, n):
    """(M, n): n distinct uniform random offsets in [0, size) for each of the
    M sizes (all >= n), drawn one at a time over the offsets not yet taken."""
    sizes = np.asarray(sizes, np.int64)
    chosen = np.empty((len(sizes), 0), np.int64)
    for j in range(n):
        r = (rng.random(len(sizes)) * (sizes - j)).astype(np.int64)
        for i in range(j):            # step over the taken offsets, smallest first
            r += r >= chosen[:, i]
        chosen = np.sort(np.column_stack([chosen, r]), axis=1)
    return chosen


def tail_exceed(p, s, t):
    """The share of trials reaching t, from one table's quantiles (p, s)."""
    logp = np.log(p)
    if t <= s[0]:
        return float(p[0])            # at least p[0]: below the grid's first quantile
    for i in range(1, len(s)):
        if t <= s[i]:
            f = (t - s[i - 1]) / max(s[i] - s[i - 1], 1e-12)
            return float(np.exp(logp[i - 1] + f * (logp[i] - logp[i - 1])))
    if len(s) < 2 or s[-1] <= s[-2]:
        return float(p[-1]) if t <= s[-1] else 0.0
    slope = (logp[-1] - logp[-2]) / (s[-1] - s[-2])      # < 0
    return float(np.exp(logp[-1] + slope * (t - s[-1])))


def stored_format(text):
    """The "format" of a stored "impostor_scores" value (None when unreadable)."""
    try:
        d = json.loads(text)
        return d.get("format") if isinstance(d, dict) else None
    except ValueError:
        return None


class ImpostorScores:
    """tables: {n: {K: (p, scores)}}: for galleries of K people with n images
    each, p decreasing exceedance probabilities and scores the (non-decreasing)
    best gallery score that a share p of outsider probes reaches; trials: how
    many (gallery, probe) trials each table rests on."""

    def __init__(self, tables, trials):
        self.tables = {int(n): {int(k): (np.asarray(p, np.float64), np.asarray(s, np.float64))
                                for k, (p, s) in sorted(t.items())}
                       for n, t in sorted(tables.items())}
        self.trials = int(trials)

    @classmethod
    def measure(cls, verifier, feats, labels, n_trials=DEFAULT_TRIALS, seed=0,
                max_images=MAX_IMAGES, sizes=GALLERY_SIZES, probes=PROBES_PER_GALLERY,
                budget=1 << 23):
        """Tables from simulated galleries of the labelled training features.
        The Joint Bayesian score is z'Az + m'Am - 2 z'Gm: with zA and zG
        precomputed per image, a mean's terms are means of rows, and a
        gallery's probes x means cross terms one batched matmul. budget:
        floats gathered at once (memory)."""
        if n_trials < 2 * MIN_TAIL_TRIALS:
            raise ValueError(f"impostor trials must be at least {2 * MIN_TAIL_TRIALS} (a "
                             f"quantile rests on {MIN_TAIL_TRIALS}), got {n_trials}")
        labels = np.asarray(labels)
        jb = verifier.jb
        z = jb.centred(verifier.project(feats), "features")
        za, zg = z @ jb.A, z @ jb.G
        probe_term = np.einsum("ij,ij->i", za, z).astype(np.float32)
        d = z.shape[1]
        both = np.concatenate([z, za], 1).astype(np.float32)   # one gather for m and mA
        zg = zg.astype(np.float32)
        _, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
        people = len(counts)
        if people < 2:
            raise ValueError("impostor trials need at least 2 identities")
        grouped = np.argsort(index, kind="stable")         # each person's images together
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rng = np.random.default_rng(seed)
        n_galleries = -(-int(n_trials) // probes)
        tables = {}
        for n in range(1, max_images + 1):
            eligible = np.flatnonzero(counts >= n)
            cap = min(len(eligible), int((1 - OUTSIDE_SHARE) * people), max(sizes))
            if cap < 1:
                break
            ks = [k for k in sizes if k < cap] + [cap]
            tables[n] = {}
            for k in ks:
                per_chunk = max(1, min(n_galleries, budget // (k * max(n, probes) * d)))
                best = []
                for g0 in range(0, n_galleries, per_chunk):
                    gc = min(per_chunk, n_galleries - g0)
                    keys = rng.random((gc, len(eligible)))
                    pick = (np.argpartition(keys, k - 1, axis=1)[:, :k] if k < len(eligible)
                            else np.argsort(keys, axis=1))
                    who = eligible[pick]                                     # (gc, k)
                    offs = distinct_offsets(rng, counts[who].ravel(), n).reshape(gc, k, n)
                    rows = grouped[starts[who][..., None] + offs]           # (gc, k, n)
                    m = both[rows[..., 0]]                                  # (gc, k, 2d)
                    for j in range(1, n):
                        m += both[rows[..., j]]
                    m /= n
                    mz = m[..., :d]
                    gallery_term = np.einsum("gkd,gkd->gk", m[..., d:], mz)
                    inside = np.zeros((gc, people), bool)
                    inside[np.arange(gc)[:, None], who] = True
                    person = rng.integers(0, people, (gc, probes))
                    while True:                  # outsiders: redraw the gallery's people
                        again = inside[np.arange(gc)[:, None], person]
                        if not again.any():
                            break
                        person[again] = rng.integers(0, people, int(again.sum()))
                    img = grouped[starts[person]
                                  + (rng.random(person.shape) * counts[person]).astype(np.int64)]
                    s = (probe_term[img][:, :, None] + gallery_term[:, None, :]
                         - 2 * np.matmul(zg[img], mz.transpose(0, 2, 1)))  # (gc, probes, k)
                    best.append(s.max(2).ravel())
                best = np.sort(np.concatenate(best))[::-1]
                p = tail_grid(len(best))
                tables[n][k] = (p, best[np.ceil(p * len(best)).astype(int) - 1])
        return cls(tables, n_galleries * probes)

    def sizes(self, n):
        """The gallery sizes measured for n-image means."""
        return sorted(self.tables[self.images_table(n)])

    def images_table(self, n):
        """The measured n nearest below (or at) n: means of more images than
        measured use the largest measured."""
        have = [m for m in self.tables if m <= n]
        return max(have) if have else min(self.tables)

    def hazard(self, n, k, t):
        """(H = -log(1 - P(max >= t)) for k people of n images, k beyond the
        largest measured size?)."""
        table = self.tables[self.images_table(n)]
        ks = sorted(table)

        def log_h(kk):
            pr = min(tail_exceed(*table[kk], t), 1 - 1e-12)
            return np.log(max(-np.log1p(-pr), 1e-300))

        if k in table:
            return float(np.exp(log_h(k))), False
        if k > ks[-1]:
            if len(ks) < 2:
                slope = 1.0           # one size measured: as if independent (cautious)
            else:
                slope = (log_h(ks[-1]) - log_h(ks[-2])) / np.log(ks[-1] / ks[-2])
                slope = min(max(slope, 0.0), 1.0)
            return float(np.exp(log_h(ks[-1]) + slope * np.log(k / ks[-1]))), True
        hi = next(kk for kk in ks if kk > k)
        lo = max(kk for kk in ks if kk < k)
        f = np.log(k / lo) / np.log(hi / lo)
        return float(np.exp((1 - f) * log_h(lo) + f * log_h(hi))), False

    def probe_far(self, counts, t):
        """Share of probes of people not in the gallery whose best score
        against it reaches t (counts: images of each gallery person)."""
        return self._far(counts, t)[0]

    def _far(self, counts, t):
        counts = np.asarray(list(counts), np.int64)
        if counts.ndim != 1 or len(counts) == 0 or counts.min() < 1:
            raise ValueError("a gallery needs at least one person with at least one image")
        k = len(counts)
        h, beyond = 0.0, False
        for n, share in zip(*np.unique(counts, return_counts=True)):
            hn, b = self.hazard(int(n), k, t)
            h += share / k * hn
            beyond |= b
        return float(-np.expm1(-h)), beyond

    def extrapolated(self, counts, t):
        """t lies beyond a measured tail, or the gallery beyond the sizes measured."""
        counts = list(counts)
        if self._far(counts, t)[1]:
            return True
        k = len(counts)
        for n in set(int(c) for c in counts):
            table = self.tables[self.images_table(n)]
            near = [kk for kk in table if kk >= k][:1] + [kk for kk in table if kk <= k][-1:]
            if any(t > table[kk][1][-1] for kk in near):
                return True
        return False

    def threshold(self, counts, far):
        """(the lowest t with probe_far(counts, t) <= far, extrapolated?)."""
        if not 0 < far < 1:
            raise ValueError(f"FAR must be between 0 and 1, got {far}")
        counts = list(counts)
        scores = [s for t in self.tables.values() for _, s in t.values()]
        lo, hi = min(s[0] for s in scores), max(s[-1] for s in scores)
        if self.probe_far(counts, lo) <= far:
            return float(lo), False
        while self.probe_far(counts, hi) > far:     # past the measured tails
            hi += max(hi - lo, 1.0)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if self.probe_far(counts, mid) > far:
                lo = mid
            else:
                hi = mid
        return float(hi), self.extrapolated(counts, hi)

    def to_json(self):
        return json.dumps({"format": FORMAT, "trials": self.trials,
                           "statistic": "best score of an outsider probe over a gallery of "
                                        "`people` means of `images` images",
                           "tables": [{"images": n, "people": k, "p": [float(x) for x in p],
                                       "score": [float(x) for x in s]}
                                      for n, t in self.tables.items()
                                      for k, (p, s) in t.items()]})

    @classmethod
    def from_json(cls, text, where):
        """From the metadata value; None for an older format (OLD_FORMATS: the
        caller falls back); ValueError naming `where` when it is damaged."""
        try:
            d = json.loads(text)
            if isinstance(d, dict) and d.get("format") in OLD_FORMATS:
                return None
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            trials = d["trials"]
            if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
                raise ValueError("trials is not a positive integer")
            tables = {}
            if not isinstance(d["tables"], list) or not d["tables"]:
                raise ValueError("tables is not a non-empty list")
            for t in d["tables"]:
                n, k = t["images"], t["people"]
                if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                           for x in (n, k)):
                    raise ValueError("images / people are not positive integers")
                p, s = np.asarray(t["p"], np.float64), np.asarray(t["score"], np.float64)
                if p.ndim != 1 or p.shape != s.shape or len(p) < 1:
                    raise ValueError(f"table images={n} people={k} is malformed")
                if not (np.all(np.isfinite(p)) and np.all(np.isfinite(s))
                        and np.all((p > 0) & (p < 1)) and np.all(np.diff(p) < 0)
                        and np.all(np.diff(s) >= 0)):
                    raise ValueError(f"table images={n} people={k} is not a decreasing tail "
                                     "of finite scores")
                if k in tables.setdefault(n, {}):
                    raise ValueError(f"table images={n} people={k} appears twice")
                tables[n][k] = (p, s)
            if 1 not in tables:
                raise ValueError("the tables of single images (images 1) are missing")
            if any(1 not in t for t in tables.values()):
                raise ValueError("a table of galleries of one person (people 1) is missing")
            return cls(tables, trials)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{where}: metadata \"impostor_scores\" is damaged ({e})") \
                from None
