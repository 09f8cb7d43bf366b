"""Make the demo dataset data/demo/: a synthetic book shop, small enough to train on in a minute,
made so that what the paper claims can be seen (synthetic: no real readers or books).

    python make_demo.py            # writes data/demo/raw/*, then data/demo/ (via cikgrec_prepare.prepare)

What is planted. 600 readers, 1,440 books in 12 genres (120 each, by 12 authors of 10 books
each). Each reader has one or two favourite genres (some genres are more popular than others)
and two favourite authors in them; 60% of each reader's picks are books of a favourite author,
33% books of a favourite genre (popular ones somewhat more often), 7% books of any genre; a
rating of 4 or 5 is a like (most picks in a favourite genre, few stray ones). Half of the
readers are sparse: 5-7 ratings, so 4-6 liked books in train.txt (under 5 likes, a reader is
dropped). Their few interactions say little on their own, and most books are read by few
readers; the KG (each book -> its genre and its author, each author -> their genre) and the
interests (what the books they read are about) say more.

The interest file is made the way `llm_interests.py infer` + `cluster` make it: a stand-in LLM
answers each reader's prompt (llm_interests.make_jobs: the titles of the last 30 training
items, validation items left out) with at most five interest phrases derived from those titles,
as a model would: the genres it sees most (each in one of several wordings: "whodunits",
"murder mysteries", ...), sometimes with a typo, sometimes an off-topic phrase ("page
turners") or a wrong genre, in the list shapes models write (commas, numbered lines, a
preamble). llm_interests.cluster_answers turns them into interest nodes (TF-IDF + k-means,
clusters held by a fifth of the readers or by one reader dropped), written by
llm_interests.write_outputs: user_interest_clustered.txt and interest_clusters.tsv (what each
cluster means). The answers are kept in raw/answers.jsonl, in the answers-file format: copied to
interests/demo/llm_answers.jsonl, `llm_interests.py cluster --dataset demo --data-dir data` reads them too.
Everything comes from one seeded generator, so the files are the same on every run.

The raw files show the input of `cikgrec_cli.py prepare` ("Your own data" in README.md):
ratings.csv (user,item,rating,timestamp), books.csv (item,name), kg.csv (head,relation,tail).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np

import cikgrec
import cikgrec_prepare
import llm_interests

# genre: (title nouns, the wordings a model uses for it)
GENRES = {
    "mystery": (("Murder", "Secret", "Shadow", "Clue"), ("mystery novels", "whodunits", "murder mysteries", "detective stories")),
    "fantasy": (("Dragon", "Crown", "Spell", "Realm"), ("fantasy", "epic fantasy", "dragons and magic", "sword and sorcery")),
    "romance": (("Heart", "Summer", "Promise", "Kiss"), ("romance novels", "love stories", "romantic fiction")),
    "history": (("Empire", "War", "Dynasty", "Revolution"), ("history books", "military history", "ancient empires")),
    "science": (("Atom", "Universe", "Gene", "Cosmos"), ("popular science", "physics and cosmology", "science writing")),
    "horror": (("Haunting", "Crypt", "Night", "Fear"), ("horror", "ghost stories", "scary books", "gothic horror")),
    "poetry": (("Verses", "Songs", "Odes", "Sonnets"), ("poetry", "poems", "verse collections")),
    "travel": (("Road", "Islands", "Journey", "Map"), ("travel writing", "travelogues", "exploring the world")),
    "cooking": (("Kitchen", "Feast", "Bread", "Spices"), ("cookbooks", "cooking", "recipes and food")),
    "biography": (("Life", "Memoir", "Portrait", "Years"), ("biographies", "memoirs", "life stories")),
    "humour": (("Jokes", "Laughter", "Mischief", "Farce"), ("humour", "funny books", "comic novels")),
    "adventure": (("Quest", "Expedition", "Treasure", "Storm"), ("adventure stories", "action adventure", "survival tales")),
}
OFF_TOPIC = ("fiction", "bestsellers", "page turners", "good stories", "strong characters", "reading for fun",
             "classic literature", "award winners", "short reads", "books")
ADJECTIVES = ("Silent", "Lost", "Golden", "Last", "Hidden", "Broken", "Endless", "Little")
N_USERS, PER_GENRE, BOOKS_PER_AUTHOR = 600, 120, 10
SPARSE_SHARE = 0.5  # readers with 5-7 ratings
K_CLUSTERS = 40  # kappa of Eq. 2 for the demo's phrases
AUTHOR_SHARE, POPULARITY_PULL = 0.6, 0.3  # picks of a favourite author; the Zipf exponent within a genre


def typo(phrase: str, rng) -> str:
    """One typing slip in the longest word: two letters swapped, or one dropped."""
    words = phrase.split()
    w = max(range(len(words)), key=lambda i: len(words[i]))
    word, i = words[w], int(rng.integers(1, max(2, len(words[w]) - 1)))
    words[w] = word[:i - 1] + word[i] + word[i - 1] + word[i + 1:] if rng.random() < 0.5 else word[:i] + word[i + 1:]
    return " ".join(words)


def fake_answer(genres_seen: list, rng) -> str:
    """What a model answers for a prompt whose books are of genres_seen (one genre per book, read
    off the titles): the genres it sees most, in its own words, with a model's noise."""
    names, counts = np.unique(genres_seen, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    top = [str(names[o]) for o in order if counts[o] >= max(1, 0.25 * counts.max())][:3]
    phrases = []
    for r, g in enumerate(top):
        wordings = GENRES[g][1]
        for w in rng.choice(len(wordings), size=1 + (r == 0 and rng.random() < 0.5), replace=False):
            phrases.append(wordings[w])
    if rng.random() < 0.4:
        phrases.append(OFF_TOPIC[rng.integers(len(OFF_TOPIC))])
    if rng.random() < 0.1:  # a wrong guess
        wordings = GENRES[list(GENRES)[rng.integers(len(GENRES))]][1]
        phrases.append(wordings[rng.integers(len(wordings))])
    phrases = [typo(p, rng) if rng.random() < 0.12 else p for p in phrases][:5]
    phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    shape = rng.random()
    if shape < 0.1:
        return "\n".join(f"{n}. {p.title()}" for n, p in enumerate(phrases, 1))
    if shape < 0.2:
        return "Here are the user's interests: " + ", ".join(phrases)
    return ", ".join(phrases)


def make(root: Path = Path(__file__).resolve().parent / "data" / "demo", seed: int = 7) -> dict:
    """Write root/raw/{ratings,books,kg}.csv, prepare them into root/, then answer each reader's
    prompt and cluster the answers into the interest file. Returns prepare's stats."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    genres = list(GENRES)
    books, kg, genre_of = [], [], {}
    authors_per_genre = PER_GENRE // BOOKS_PER_AUTHOR
    for g, genre in enumerate(genres):
        nouns = GENRES[genre][0]
        for a in range(authors_per_genre):
            kg.append((f"author:{genre}-{a}", "writes", f"genre:{genre}"))
        for b in range(PER_GENRE):
            isbn = f"B{g:02d}{b:03d}"
            books.append((isbn, f"The {ADJECTIVES[b % 8]} {nouns[b // 8 % 4]} ({genre.title()} {b + 1})"))
            genre_of[isbn] = genre
            kg.append((isbn, "genre", f"genre:{genre}"))
            kg.append((isbn, "author", f"author:{genre}-{b % authors_per_genre}"))
    # within a genre, a Zipf-like pull over a shuffled order (popularity is not the book number)
    pull = [rng.permutation(1.0 / np.arange(1, PER_GENRE + 1) ** POPULARITY_PULL) for _ in genres]
    pull = [p / p.sum() for p in pull]
    genre_weight = 1.0 / np.arange(1, len(genres) + 1) ** 0.5
    genre_weight /= genre_weight.sum()
    ratings, start = [], 1_700_000_000
    for u in range(N_USERS):
        favourites = rng.choice(len(genres), size=1 + (rng.random() < 0.4), replace=False, p=genre_weight)
        fav_authors = [(int(rng.choice(favourites)), int(rng.integers(authors_per_genre))) for _ in range(2)]
        n = int(rng.integers(5, 8)) if rng.random() < SPARSE_SHARE else int(rng.integers(12, 46))
        seen = set()
        while len(seen) < n:
            r = rng.random()
            if r < AUTHOR_SHARE:  # a book of a favourite author
                g, a = fav_authors[int(rng.integers(2))]
                b = a + authors_per_genre * int(rng.integers(BOOKS_PER_AUTHOR))
            else:  # a book of a favourite genre, or (one in seven) a stray one
                g = int(rng.choice(favourites)) if r < 0.93 else int(rng.integers(len(genres)))
                b = int(rng.choice(PER_GENRE, p=pull[g]))
            if (g, b) in seen:
                continue
            seen.add((g, b))
            liked = rng.random() < (0.92 if g in favourites else 0.3)
            rating = int(rng.choice([4, 5]) if liked else rng.integers(1, 4))
            ratings.append((f"reader{u:03d}", books[g * PER_GENRE + b][0], rating,
                            start + int(rng.integers(0, 365 * 86400))))
    ratings.sort(key=lambda r: r[3])
    for name, header, rows in (("ratings.csv", ("user", "item", "rating", "timestamp"), ratings),
                               ("books.csv", ("item", "name"), books),
                               ("kg.csv", ("head", "relation", "tail"), kg)):
        with open(raw / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    st = cikgrec_prepare.prepare(raw / "ratings.csv", root.name, root.parent, items=raw / "books.csv", kg=raw / "kg.csv",
                                 min_rating=4, force=True)
    # the LLM step, with a stand-in model: the prompts llm_interests.py would send, answered
    item_ids = [org_id for org_id, _ in cikgrec.read_id_list(root / "item_list.txt", "org_id remap_id name")]
    jobs, _ = llm_interests.make_jobs(llm_interests.load_prompt_data(root), "books")
    answers = {j.user: {"user": j.user, "answer": fake_answer([genre_of[item_ids[i]] for i in j.items], rng)}
               for j in jobs}
    (raw / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers.values()))
    with contextlib.redirect_stderr(io.StringIO()):  # cluster's progress lines (timings: not the same every run)
        result = llm_interests.cluster_answers(answers, cikgrec_prepare.list_size(root / "entity_list.txt"), K_CLUSTERS)
    llm_interests.write_outputs(result, root)
    st = {**cikgrec_prepare.dataset_stats(root), "processing": st["processing"]}
    (root / "stats.md").write_text(cikgrec_prepare.stats_markdown(root.name, st))
    return st


if __name__ == "__main__":
    st = make()
    print(cikgrec_prepare.stats_markdown("demo", st), end="")
