"""The floor `make bench` compares the pipeline against: the night's work done directly by one
DuckDB process, its tables in memory, with no Airflow, dbt, Great Expectations or staging files.

On the same objects in S3 it verifies each drop's manifest (bytes hashed while downloaded), reads
the drops, checks the row rules, hashes our profiles' identifiers, writes each agreement's seed set
(seeds.py's HMAC SQL), matches by email then phone (with the pipeline's ambiguity rule), enriches
with the latest consented record, evaluates the segments and exports each segment's consented
members to each of its destinations, hashed under the destination's profile, as CSV files, and
counts each prospect segment's audience (its partner's consented persons matching none of
our profiles) where it reaches min_audience_size. The identifier normalization is the dbt macro
itself, compiled once per hash profile before timing starts, so both sides hash exactly the same way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import duckdb

from partner_pipeline.agreements import Agreement
from partner_pipeline.contracts import StageFile
from partner_pipeline.governance import Destination
from partner_pipeline.settings import load_settings
from partner_pipeline.seeds import hmac_pads, seed_id_sql, write_seed_file
from partner_pipeline.storage import download_with_sha256, list_objects
from partner_pipeline.transform import run_dbt
from partner_pipeline.sqltext import quote_ident, quote_path
from partner_pipeline.validation import VALIDATION_VIEW, row_rules, validation_view_sql



def table(kind: str, agreement: Agreement) -> str:
    """The floor's table of one drop partner's rows at one step (valid, matched, prospects), quoted."""
    return quote_ident(f"{kind}__{agreement.partner_id}")


def reads(segment: dict, agreement: Agreement) -> bool:
    """Whether a segment's rule reads the partner's attributes (named <partner_id>__<attribute>)."""
    return f"{agreement.partner_id}__" in segment["rule"]


STAGES = ("verify (download + sha256)", "load + check rows", "hash profiles", "seed set", "match", "enrich",
          "segments + export", "prospects + export")


def compiled_normalization(hash_profile: str, country_code: str, work: Path) -> tuple[str, str]:
    """(email expression, phone expression) over columns `email` and `phone`, from the dbt macros."""
    inline = (f"select {{{{ normalize_email('email', \"'{hash_profile}'\") }}}} as e"
              f" ||| {{{{ normalize_phone('phone', \"'{hash_profile}'\", \"'{country_code}'\") }}}}")
    compiling = dataclasses.replace(load_settings(), warehouse_kind="file", warehouse_path=work / "compile.duckdb",
                                    marts_path=work / "compile_marts.duckdb")
    result = run_dbt(compiling, ["compile", "--quiet", "--inline", inline], work / "target")
    if result.returncode != 0:
        raise RuntimeError(f"dbt compile of the normalization macros failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    email, phone = result.stdout.strip().removeprefix("select ").split(" ||| ")
    return email.removesuffix(" as e"), phone


def run_floor(client, landing_bucket: str, first_party_bucket: str, agreements: list[Agreement], day: str,
              segments: dict[str, dict], prospect_segments: dict[str, dict], destinations: dict[str, Destination],
              all_attributes: dict[str, dict[str, Agreement]], seed_key: bytes, work: Path) -> dict:
    """The night in one DuckDB process, for one drop of each of `agreements`; returns its wall time
    (after compiling the normalization), stage timings (summed over the drops) and what it found."""
    normalizations = {(p, cc): compiled_normalization(p, cc, work) for p, cc in
                      {*((a.hash_profile, a.default_country_code) for a in agreements),
                       *((d.hash_profile, d.default_country_code) for d in destinations.values())}}
    # each drop partner's hashes of our profiles: one pair of columns per hash profile and country code
    hash_columns = {key: (f"email_sha256__{n}", f"phone_sha256__{n}") for n, key in
                    enumerate(sorted({(a.hash_profile, a.default_country_code) for a in agreements}))}
    timings, found = dict.fromkeys(STAGES, 0.0), {"partners": {}, "seeds_sent": {}}

    def timed(stage: str, started: float) -> None:
        timings[stage] += time.perf_counter() - started

    # tables in memory, no memory limit but DuckDB's default (80 % of RAM): a floor, not a design that
    # fits 4 GB (at 10M rows: 161 s and 13.2 GB, against 268 s and 8.5 GB with its tables in a file)
    con = duckdb.connect(config={"temp_directory": str(work / "tmp"), "preserve_insertion_order": False})

    night_started = started = time.perf_counter()
    drops = {}
    for agreement in agreements:
        prefix = f"{agreement.partner_id}/{day}/"
        manifest = json.loads(client.get_object(Bucket=landing_bucket, Key=prefix + "manifest.json")["Body"].read())
        files = []
        for entry in manifest["files"]:
            local = work / "drop" / agreement.partner_id / entry["key"]
            if download_with_sha256(client, landing_bucket, prefix + entry["key"], local) != entry["sha256"]:
                raise RuntimeError(f"{prefix}{entry['key']}: checksum mismatch")
            files.append(str(local))
        delivered_at = next(o.last_modified for o in list_objects(client, landing_bucket, prefix) if o.key.endswith("_SUCCESS"))
        drops[agreement.partner_id] = (manifest, files, delivered_at)
    snapshot = []
    for obj in list_objects(client, first_party_bucket, f"profiles/{day}/"):
        if obj.key.endswith((".csv", ".csv.gz", ".parquet")):
            local = work / "profiles" / obj.key.rsplit("/", 1)[1]
            download_with_sha256(client, first_party_bucket, obj.key, local)
            snapshot.append(str(local))
    timed("verify (download + sha256)", started)

    for agreement in agreements:
        started = time.perf_counter()
        manifest, files, delivered_at = drops[agreement.partner_id]
        # the drop's file names come from its manifest: bound, never spliced into the SQL
        con.execute(f"CREATE TABLE {StageFile.RECORDS} AS SELECT * FROM read_csv(?, header=true, all_varchar=true)", [files])
        rows = con.execute(f"SELECT count(*) FROM {StageFile.RECORDS}").fetchone()[0]
        if rows != manifest["record_count"]:
            raise RuntimeError(f"{agreement.partner_id}: row count {rows} != manifest {manifest['record_count']}")
        # the stage file's shape: the optional seed_id and the issued seeds the rule seed_id_unknown reads (none here)
        con.execute(f"ALTER TABLE {StageFile.RECORDS} ADD COLUMN IF NOT EXISTS seed_id VARCHAR; {StageFile.issued_seeds_ddl()}")
        # the suite's rules (validation.row_rules) over the relation the suite runs on (validation_view_sql)
        con.execute(validation_view_sql(agreement, str(delivered_at)))
        rules = row_rules(agreement)
        added = [c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE {VALIDATION_VIEW})").fetchall()
                 if c not in {c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE {StageFile.RECORDS})").fetchall()}]
        checks = ", ".join(f"({sql}) AS {quote_ident(name)}" for name, sql in rules.items())
        con.execute(f"CREATE TABLE checked AS SELECT *, {checks} FROM {VALIDATION_VIEW}")
        partner = found["partners"][agreement.partner_id] = {}
        partner["invalid_by_rule"] = {k: v for k, v in zip(rules, con.execute(
            "SELECT " + ", ".join(f"count(*) FILTER (WHERE {quote_ident(r)})" for r in rules) + " FROM checked").fetchone()) if v}
        con.execute(f"CREATE TABLE {table('valid', agreement)} AS SELECT * EXCLUDE ("
                    + ", ".join(map(quote_ident, [*added, *rules])) + ") FROM checked WHERE NOT ("
                    + " OR ".join(f"coalesce({quote_ident(r)}, false)" for r in rules) + ")")
        con.execute(f"DROP VIEW {VALIDATION_VIEW}; DROP TABLE {StageFile.RECORDS}; DROP TABLE checked; DROP TABLE {StageFile.ISSUED_SEEDS}")
        partner["rows_valid"] = con.execute(f"SELECT count(*) FROM {table('valid', agreement)}").fetchone()[0]
        timed("load + check rows", started)

    started = time.perf_counter()
    # the snapshot read once: hashed here, its consent read by the seed sets, its columns by the enrichment
    con.execute("CREATE TABLE profiles AS SELECT * FROM read_csv(?, header=true, all_varchar=true)", [snapshot])
    hashes = ", ".join(f"sha256({normalizations[key][0]}) AS {email}, sha256({normalizations[key][1]}) AS {phone}"
                       for key, (email, phone) in hash_columns.items())
    con.execute(f"CREATE TABLE profile_hashes AS SELECT profile_id, {hashes} FROM profiles")
    timed("hash profiles", started)

    for agreement in agreements:
        if agreement.seed_set is None:
            continue
        started = time.perf_counter()  # the consenting profiles' seeds (seeds.py's HMAC SQL), one file
        email, phone = hash_columns[(agreement.hash_profile, agreement.default_country_code)]
        ipad, opad = hmac_pads(seed_key)
        found["seeds_sent"][agreement.partner_id], _ = write_seed_file(con, f"""
            SELECT {seed_id_sql('?', 'h.profile_id')} AS seed_id, h.{email} AS email_sha256, h.{phone} AS phone_sha256
            FROM profile_hashes h SEMI JOIN profiles p
                 ON p.profile_id = h.profile_id AND p.consent_partner_sharing = 'true'
            WHERE h.{email} IS NOT NULL OR h.{phone} IS NOT NULL ORDER BY seed_id""",
            [opad, ipad, agreement.agreement_id], work / f"seeds-{agreement.partner_id}.{agreement.seed_set.format}",
            agreement.seed_set.format)
        timed("seed set", started)

    for agreement in agreements:
        started = time.perf_counter()
        email, phone = hash_columns[(agreement.hash_profile, agreement.default_country_code)]
        con.execute(f"""CREATE TABLE {table('matched', agreement)} AS
            WITH email_index AS (SELECT {email} AS email_sha256, count(*) AS n, min(profile_id) AS profile_id FROM profile_hashes
                                 WHERE {email} IN (SELECT email_sha256 FROM {table('valid', agreement)}) GROUP BY 1),
                 phone_index AS (SELECT {phone} AS phone_sha256, count(*) AS n, min(profile_id) AS profile_id FROM profile_hashes
                                 WHERE {phone} IN (SELECT phone_sha256 FROM {table('valid', agreement)}) GROUP BY 1),
                 resolved AS MATERIALIZED (
                    SELECT v.*, CASE WHEN e.n IS NOT NULL THEN 'email' WHEN p.n IS NOT NULL THEN 'phone' END AS via,
                           CASE WHEN e.n = 1 THEN e.profile_id WHEN e.n IS NULL AND p.n = 1 THEN p.profile_id END AS candidate
                    FROM {table('valid', agreement)} v LEFT JOIN email_index e USING (email_sha256)
                         LEFT JOIN phone_index p USING (phone_sha256)),
                 -- the ambiguity rules as aggregates on two narrow columns (windows would sort the wide rows)
                 shared_profiles AS (SELECT candidate FROM resolved WHERE candidate IS NOT NULL GROUP BY 1
                                     HAVING min(partner_person_id) <> max(partner_person_id)),
                 split_persons AS (SELECT partner_person_id FROM resolved WHERE candidate IS NOT NULL AND partner_person_id IS NOT NULL
                                   GROUP BY 1 HAVING min(candidate) <> max(candidate))
            SELECT *, CASE WHEN candidate IS NOT NULL AND candidate NOT IN (FROM shared_profiles)
                                AND coalesce(partner_person_id NOT IN (FROM split_persons), true) THEN candidate END AS profile_id_matched
            FROM resolved""")
        found["partners"][agreement.partner_id]["matches"] = dict(con.execute(f"""
            SELECT CASE WHEN via IS NULL THEN 'none' WHEN profile_id_matched IS NULL THEN 'ambiguous' ELSE via END, count(*)
            FROM {table('matched', agreement)} GROUP BY 1""").fetchall())
        timed("match", started)

    started = time.perf_counter()
    # each drop partner's latest consented record per profile, its attributes typed and named <partner>__<attribute>
    latest, selected = [], []
    for agreement in agreements:
        pid, alias = agreement.partner_id, table("latest", agreement)
        latest.append(f"""LEFT JOIN (SELECT * FROM {table('matched', agreement)} WHERE profile_id_matched IS NOT NULL AND consent_enrichment = 'true'
                        QUALIFY row_number() OVER (PARTITION BY profile_id_matched ORDER BY consent_ts DESC, partner_record_id DESC) = 1)
                       {alias} ON {alias}.profile_id_matched = p.profile_id""")
        selected += [f"{alias}.consent_activation AS {quote_ident('_consent_activation__' + pid)}",
                     *(f"TRY_CAST({alias}.{quote_ident(name)} AS {a.duckdb_type}) AS {quote_ident(f'{pid}__{name}')}"
                       for name, a in agreement.attributes.items())]
    dropped = {a.partner_id for a in agreements}
    selected += [f"NULL::{a.duckdb_type} AS {quote_ident(f'{pid}__{name}')}" for pid, attrs in all_attributes.items() if pid not in dropped
                for name, a in attrs.items()]
    con.execute(f"""CREATE TABLE enriched AS
        SELECT p.profile_id, p.email, p.phone, p.consent_marketing, TRY_CAST(p.lifetime_value AS DOUBLE) AS lifetime_value, p.tier,
               {', '.join(selected)}
        FROM profiles p {' '.join(latest)}""")
    timed("enrich", started)

    started = time.perf_counter()
    found["segments"] = {name: con.execute(f"SELECT count(*) FROM enriched WHERE {segment['rule']}").fetchone()[0]
                         for name, segment in sorted(segments.items())}
    found["exports"] = {}
    (work / "exports").mkdir(exist_ok=True)
    for name, segment in sorted(segments.items()):
        # sent: our marketing consent, and each partner's consent_activation whose attributes the rule reads
        refusal = " AND ".join([f"coalesce({quote_ident('_consent_activation__' + a.partner_id)}, 'true') = 'true'"
                                for a in agreements if reads(segment, a)] or ["true"])
        for destination_id in segment["destinations"]:
            destination = destinations[destination_id]
            email, phone = normalizations[(destination.hash_profile, destination.default_country_code)]
            hashed = {"email": f"sha256({email}) AS email_sha256", "phone": f"sha256({phone}) AS phone_sha256"}
            columns = [hashed[i] for i in destination.hashed_identifiers]
            written = con.execute(f"""COPY (
                SELECT * FROM (SELECT {', '.join(columns)} FROM enriched
                               WHERE ({segment['rule']}) AND consent_marketing = 'true' AND {refusal})
                WHERE {' OR '.join(f'{i}_sha256 IS NOT NULL' for i in destination.hashed_identifiers)}
                ) TO {quote_path(work / 'exports' / f'{destination_id}-{name}.csv')} (HEADER)""").fetchone()[0]
            found["exports"][f"{destination_id}/{name}"] = written
    timed("segments + export", started)

    started = time.perf_counter()
    # prospects: the latest consented record of each of a drop partner's persons that hit none of our
    # profiles, with its prospecting attributes; a prospect segment reads one partner's
    for agreement in agreements:
        pid = agreement.partner_id
        prospecting = {name: a for name, a in agreement.attributes.items()
                       if "prospecting" in a.usage_labels and not a.special_category}
        typed = "".join(f", TRY_CAST({quote_ident(name)} AS {a.duckdb_type}) AS {quote_ident(f'{pid}__{name}')}"
                        for name, a in prospecting.items())
        con.execute(f"""CREATE TABLE {table('prospects', agreement)} AS
            WITH known AS (SELECT DISTINCT partner_person_id FROM {table('matched', agreement)} WHERE via IS NOT NULL),
                 latest AS (SELECT * FROM {table('matched', agreement)}
                            QUALIFY row_number() OVER (PARTITION BY partner_person_id ORDER BY consent_ts DESC, partner_record_id DESC) = 1)
            SELECT email_sha256, phone_sha256{typed} FROM latest ANTI JOIN known USING (partner_person_id)
            WHERE {'true' if prospecting else 'false'} AND consent_enrichment = 'true' AND consent_activation = 'true'""")
    for name, segment in sorted(prospect_segments.items()):
        for destination_id in segment["destinations"]:
            destination = destinations[destination_id]
            sent = 0
            for agreement in agreements:
                # the partner's hashes go only where they mean the same
                if reads(segment, agreement) and destination.hash_profile == agreement.hash_profile:
                    condition = " OR ".join(f"{i}_sha256 IS NOT NULL" for i in destination.hashed_identifiers)
                    audience = con.execute(f"SELECT count(*) FROM {table('prospects', agreement)} "
                                           f"WHERE ({segment['rule']}) AND ({condition})").fetchone()[0]
                    sent = audience if audience >= destination.min_audience_size else 0
            found["exports"][f"{destination_id}/{name}"] = sent
    timed("prospects + export", started)
    con.close()
    return {"wall_seconds": round(time.perf_counter() - night_started, 1), "stages": {k: round(v, 1) for k, v in timings.items()},
            "found": found}


def measure_limits(work: Path, profile_rows: int) -> dict:
    """What the machine can do at best on the floor's own inputs (run after it, on the files it
    downloaded), to show how far each stage of the floor is from its hardware bound:
    - gunzip: every drop file decompressed by zlib, one core (a gzip stream cannot be split), and
      the drop's files on every core at once (one file per core);
    - read: DuckDB reading the drops' CSV (decompression and parsing, nothing kept) on every core;
    - sha256: DuckDB's SHA-256 of `profile_rows` 30-character strings, one core and every core;
      the floor hashes each profile's email and phone once per partner hash profile, and a seed's HMAC
      is two SHA-256;
    - matching's primitives: grouping `profile_rows` 64-hex keys (an index of hashes), and joining half
      as many to them (a drop's hashes probing it).
    Rates are per second of wall time."""
    import os
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    files = sorted(str(f) for f in (work / "drop").rglob("*.csv.gz"))
    compressed = sum(os.path.getsize(f) for f in files)

    def gunzip(path: str) -> int:
        inflate, size = zlib.decompressobj(wbits=31), 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                size += len(inflate.decompress(chunk))
        return size

    limits = {"drop files": len(files), "drop MB compressed": round(compressed / 1e6)}
    started = time.perf_counter()
    plain = gunzip(files[0])
    one_core = time.perf_counter() - started
    limits["gunzip MB/s (plain) one core"] = round(plain / 1e6 / one_core)
    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # zlib releases the GIL while it inflates
        plain = sum(pool.map(gunzip, files))
    limits["drop MB plain"] = round(plain / 1e6)
    limits["gunzip every drop file, every core (s)"] = round(time.perf_counter() - started, 1)
    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        started = time.perf_counter()
        rows = con.execute("SELECT count(*) FROM read_csv(?, header=true, all_varchar=true, union_by_name=true)", [files]).fetchone()[0]
        limits["read every drop's CSV, every core (s)"] = round(time.perf_counter() - started, 1)
        limits["drop rows"] = rows
        con.execute("CREATE TABLE strings AS SELECT 'person.' || lpad(i::VARCHAR, 12, '0') || '@example.com' AS s FROM range(?) t(i)",
                    [profile_rows])
        for threads in (1, os.cpu_count()):
            con.execute(f"SET threads = {int(threads)}")
            started = time.perf_counter()
            con.execute("SELECT max(sha256(s)) FROM strings").fetchone()
            seconds = time.perf_counter() - started
            limits[f"sha256 per second, {'one core' if threads == 1 else 'every core'}"] = round(profile_rows / seconds)
        # matching's primitives on keys shaped like its hashes (64 hex characters), every core
        con.execute("CREATE TABLE hashes AS SELECT sha256(s) AS h FROM strings; DROP TABLE strings")
        started = time.perf_counter()
        con.execute("SELECT count(*) FROM (SELECT h, count(*) FROM hashes GROUP BY h)").fetchone()
        limits["group the profiles' count of 64-hex keys, every core (s)"] = round(time.perf_counter() - started, 1)
        con.execute("CREATE TABLE probes AS SELECT h FROM hashes USING SAMPLE 50 PERCENT (system)")
        started = time.perf_counter()
        con.execute("SELECT count(*) FROM probes JOIN hashes USING (h)").fetchone()
        limits["join half as many 64-hex keys to them, every core (s)"] = round(time.perf_counter() - started, 1)
    return limits
