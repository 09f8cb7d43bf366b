"""Make the demo dataset data/demo/: a synthetic book shop small enough to train on in a minute.

    python make_demo.py            # writes data/demo/raw/*.csv, then data/demo/ (via cikgrec_prepare.prepare)

300 readers, 240 books in 8 genres (30 each, by 24 authors), about 24 ratings per reader over a
year. Each reader has one or two favourite genres and rates mostly books of those (popular ones
more often); a rating of 4 or 5 is a like. The KG links each book to its genre and its author
(relations "genre" and "author"), and each author to the genre they write in. The interest
file stands in for the LLM step: each reader's favourite genres (and, for one reader in five, a
stray genre) as interest nodes, the format llm_interests.py cluster writes. Everything comes
from one seeded generator, so the files are the same on every run.

The raw files show the input of `cikgrec.py prepare` ("Your own data" in README.md):
ratings.csv (user,item,rating,timestamp), books.csv (item,name), kg.csv (head,relation,tail).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

import cikgrec_prepare

GENRES = ("mystery", "fantasy", "romance", "history", "science", "horror", "poetry", "travel")
WORDS = {"mystery": ("Murder", "Secret", "Shadow", "Clue"), "fantasy": ("Dragon", "Crown", "Spell", "Realm"),
         "romance": ("Heart", "Summer", "Promise", "Kiss"), "history": ("Empire", "War", "Dynasty", "Revolution"),
         "science": ("Atom", "Universe", "Gene", "Cosmos"), "horror": ("Haunting", "Crypt", "Night", "Fear"),
         "poetry": ("Verses", "Songs", "Odes", "Sonnets"), "travel": ("Road", "Islands", "Journey", "Map")}
ADJECTIVES = ("Silent", "Lost", "Golden", "Last", "Hidden", "Broken", "Endless", "Little")
N_USERS, PER_GENRE, AUTHORS_PER_GENRE = 300, 30, 3


def make(root: Path = Path(__file__).resolve().parent / "data" / "demo", seed: int = 7) -> dict:
    """Write root/raw/{ratings,books,kg}.csv, prepare them into root/ and add the interest file.
    Returns prepare's stats."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    books, kg = [], []
    for g, genre in enumerate(GENRES):
        for a in range(AUTHORS_PER_GENRE):
            kg.append((f"author:{genre}-{a}", "writes", f"genre:{genre}"))
        for b in range(PER_GENRE):
            isbn = f"B{g:02d}{b:03d}"
            title = f"The {ADJECTIVES[b % 8]} {WORDS[genre][b // 8 % 4]} ({genre.title()} {b + 1})"
            books.append((isbn, title))
            kg.append((isbn, "genre", f"genre:{genre}"))
            kg.append((isbn, "author", f"author:{genre}-{b % AUTHORS_PER_GENRE}"))
    popularity = 1.0 / np.arange(1, PER_GENRE + 1) ** 0.7  # within a genre, a Zipf-like pull
    ratings, interests = [], []
    start = 1_700_000_000
    for u in range(N_USERS):
        favourites = rng.choice(len(GENRES), size=1 + (rng.random() < 0.5), replace=False)
        n = int(rng.integers(12, 36))
        for _ in range(n):
            g = int(rng.choice(favourites)) if rng.random() < 0.85 else int(rng.integers(len(GENRES)))
            b = int(rng.choice(PER_GENRE, p=popularity / popularity.sum()))
            liked = g in favourites
            rating = int(rng.choice([4, 5]) if liked and rng.random() < 0.9 else rng.integers(1, 4))
            ratings.append((f"reader{u:03d}", books[g * PER_GENRE + b][0], rating,
                            start + int(rng.integers(0, 365 * 86400))))
        stray = [int(rng.integers(len(GENRES)))] if rng.random() < 0.2 else []
        interests.append((f"reader{u:03d}", sorted(set(favourites.tolist() + stray))))
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
    # interest nodes, numbered after the largest entity id (the format of llm_interests.py cluster)
    users = {parts[0]: int(parts[1]) for parts in cikgrec_prepare.id_list_rows(root / "user_list.txt")}
    first = cikgrec_prepare.list_size(root / "entity_list.txt")
    lines = [f"{users[u]} {first + g}" for u, gs in interests if u in users for g in gs]
    (root / "user_interest_clustered.txt").write_text("\n".join(lines) + "\n")
    st = {**cikgrec_prepare.dataset_stats(root), "processing": st["processing"]}
    (root / "stats.md").write_text(cikgrec_prepare.stats_markdown(root.name, st))
    return st


if __name__ == "__main__":
    st = make()
    print(cikgrec_prepare.stats_markdown("demo", st), end="")
