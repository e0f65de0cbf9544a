"""Run a paper's ablation table row by row with train.py's machinery, and write it beside the paper's figures.

    python -m lab.ablate --model NAME --table TABLE                                    # one process
    torchrun --standalone --nproc_per_node=2 -m lab.ablate --model NAME --table TABLE  # DDP, as train.py

Every flag of train.py but --resume works here too (--config, --data, --set, --max-steps, --seed, ...); a
stopped table resumes where it stopped. The script knows no table: a paper declares its tables as data,
    ABLATIONS = {"table5": dict(caption=..., columns=((metric name, paper's column), ...),
                                rows=((label, {config field: value}, (paper figure per column, None if not
                                       reported)), ...), chosen=label of the paper's choice,
                                stage=the row's stage (default --model), inference=False,
                                longer={label: factor} for rows the paper trains factor x as long)}
A row's field sets the config of the table's stage when it has the field, else of the nearest stage it starts
from that has it. A training row trains, in OUT/<model>/ablation_<table>/<row>/, the oldest stage it changes
and every stage after it, and reuses the untouched stages from OUT. An inference table (inference=True: only
predict-time fields) scores the stage's own run in OUT (trained first when missing) with each row's config.

Outputs: OUT/<model>/ablation_<table>.md (our figures beside the paper's, its choice in bold) and .json (every
row: its overrides, our figures, the paper's, the folder it was trained in).
"""

import argparse
import json
import os

from lab import configs
from lab import distributed
from lab.files import atomic_write
import train
from train import MODELS, fail, lineage

PROG = "python -m lab.ablate"


def ablation_table(args):
    """The ABLATIONS entry --table names, with its defaults (stage: --model, inference: False)."""
    tables = getattr(MODELS[args.model].paper, "ABLATIONS", {})
    if args.table not in tables:
        fail(f"--table {args.table!r}: {args.model} has " +
             (f"the tables {', '.join(tables)}" if tables else "no ablation tables"))
    return dict(dict(stage=args.model, inference=False, longer={}), **tables[args.table])


def override_text(key, value):
    """A row's {field: value} item as --set text: tuples as "a,b,c", None as "none"."""
    if isinstance(value, (tuple, list)):
        return f"{key}={','.join(map(str, value))}"
    return f"{key}={'none' if value is None else value}"


def field_owner(table, key, args):
    """The stage a row's field sets: the table's stage when its config has the field, else the nearest
    stage it starts from whose config does (None: no stage has it)."""
    return next((s for s in lineage(table["stage"]) if key in train.config_fields(s, args.config)), None)


def field_stages(table, key, args):
    """The stages a row's field sets: its field_owner, and each stage before it that shares the field with the
    stage after it (its row's `shares_fields` in train.MODELS, e.g. GenHMR's prior stage: its masked transformer)."""
    owner = field_owner(table, key, args)
    chain = lineage(table["stage"])
    stages = [owner]
    for stage in chain[chain.index(owner) + 1:] if owner is not None else ():
        if key not in MODELS[stage].shares_fields:
            break
        stages.append(stage)
    return stages


def row_overrides(table, fields, args):
    """{stage: --set items} of one row: --set's items, then the row's, each on its `field_stages`."""
    given = train.stage_overrides(table["stage"], args.set, args)
    for key, value in fields.items():
        for stage in field_stages(table, key, args):
            given[stage] = given[stage] + [override_text(key, value)]
    return given


def check_table(args):
    """Fail early, with one line, on a table whose rows name fields no config has (or, in an inference
    table, fields the stage's own config lacks) or whose columns and figures disagree."""
    table = ablation_table(args)
    if table["stage"] not in lineage(args.model):
        fail(f"--table {args.table}: its stage {table['stage']!r} is not {args.model} or a stage it starts from")
    labels = [label for label, _, _ in table["rows"]]
    if table["chosen"] not in labels:
        fail(f"--table {args.table}: chosen row {table['chosen']!r} is not one of its rows {labels}")
    for label, factor in table["longer"].items():
        if label not in labels or table["inference"] or not factor > 0:
            fail(f"--table {args.table}: longer[{label!r}] = {factor!r} needs a training row of {labels} "
                 "and a factor > 0")
    own = train.config_fields(table["stage"], args.config)
    for label, fields, paper in table["rows"]:
        where = f"--table {args.table}, row {label!r}"
        if len(paper) != len(table["columns"]):
            fail(f"{where}: {len(paper)} paper figures for {len(table['columns'])} columns")
        bad = (sorted(set(fields) - own) if table["inference"]
               else [k for k in fields if field_owner(table, k, args) is None])
        if bad:
            fail(f"{where}: no config {'of ' + table['stage'] if table['inference'] else 'it trains'} has the "
                 f"field(s) {', '.join(bad)}")


def row_folder(index, label):
    """The folder name of row `index`: "03-coarse-mesh-sampling"."""
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    return f"{index:02d}-{'-'.join(filter(None, slug.split('-')))}"


def finished(folder, name):
    """Whether stage `name` in `folder` has its final checkpoint and its report."""
    path = os.path.join(folder, name, "ckpt.pt")
    if not os.path.exists(os.path.join(folder, name, "metrics.json")) or not os.path.exists(path):
        return False
    ckpt = train.read_checkpoint(path, name, why="--table")
    preset = MODELS[name].paper.CONFIGS[ckpt["config_name"]]
    return ckpt["step"] >= configs.recipe_of(configs.config_from_dict(type(preset), ckpt["config"])).max_steps


def train_row(table, index, label, fields, args, ranks):
    """Train one row in its folder (resuming a stopped one) and return its stage's metrics.json values."""
    name, chain = table["stage"], lineage(table["stage"])[::-1]  # oldest first
    given = row_overrides(table, fields, args)
    if label in table["longer"]:  # the paper trains this row longer: factor x the stage's steps, last so it wins
        steps = [f"max_steps={args.max_steps}"] if args.max_steps is not None else []
        cfg = train.apply_overrides(MODELS[name].paper.CONFIGS[args.config], steps + given[name])
        given[name] = given[name] + [f"max_steps={round(table['longer'][label] * configs.recipe_of(cfg).max_steps)}"]
    # {}: the stage alone
    first = min([chain.index(s) for k in fields for s in field_stages(table, k, args)], default=len(chain) - 1)
    folder = os.path.join(args.out, args.model, f"ablation_{args.table}", row_folder(index, label))
    row_args = argparse.Namespace(**{**vars(args), "out": folder, "reused": {s: args.out for s in chain[:first]}})
    ranks.print0(f"== {args.table} row {index} {label!r}: {' '.join(sum(given.values(), [])) or 'the config as is'}"
                 f" | trains {', '.join(chain[first:])} in {folder} ==")
    if not finished(folder, name):
        resume = os.path.exists(os.path.join(folder, name, "ckpt.pt"))
        train.run_chain(train.plan_chain(name, given, resume, row_args), row_args, ranks)
    with open(os.path.join(folder, name, "metrics.json")) as f:
        summary = json.load(f)
    return {column: train.lookup(summary, column) for column, _ in table["columns"]}, os.path.join(folder, name)


def score_rows(table, args, ranks):
    """An inference table: the stage's own run in OUT (trained first when missing or unfinished), scored on
    the held-out set with each row's config. Returns [{column: value}] on rank 0."""
    name = table["stage"]
    if not finished(args.out, name):
        resume = os.path.exists(os.path.join(args.out, name, "ckpt.pt"))
        train.run_chain(train.plan_chain(name, train.stage_overrides(name, args.set, args), resume, args), args, ranks)
    model, cfg = train.trained_model(name, args, ranks.device)
    eval_set = train.build_dataset(name, cfg, "evaluation", args.eval_samples or MODELS[name].eval_samples, args,
                                   ranks)
    scores = []
    for index, (label, fields, _) in enumerate(table["rows"]):
        row_cfg = train.apply_overrides(cfg, [override_text(k, v) for k, v in fields.items()])
        result, _, _ = train.evaluate(MODELS[name], model, row_cfg, eval_set, None, args, ranks)
        if ranks.master:
            ranks.print0(f"{args.table} row {index} {label!r}: {train.format_metrics(result) if result else ''}")
            scores.append({column: result[column] for column, _ in table["columns"]})
    return scores, os.path.join(args.out, name)


def run_ablation(args, ranks):
    """Every row of --table's table, then OUT/<model>/ablation_<table>.md and .json (rank 0)."""
    table = ablation_table(args)
    if table["inference"]:
        scores, source = score_rows(table, args, ranks)
        sources = [source] * len(table["rows"])
    else:
        scores, sources = [], []
        for index, (label, fields, _) in enumerate(table["rows"]):
            score, source = train_row(table, index, label, fields, args, ranks)
            scores.append(score)
            sources.append(source)
    if ranks.master:
        write_ablation(table, scores, sources, args)


def write_ablation(table, scores, sources, args):
    """OUT/<model>/ablation_<table>.json (every row: overrides, our figures, the paper's) and .md (one table)."""
    rows = [dict(label=label, overrides=fields, steps_factor=table["longer"].get(label, 1),
                 chosen=label == table["chosen"], folder=source, ours=score,
                 paper=dict(zip([c for c, _ in table["columns"]], paper)))
            for (label, fields, paper), score, source in zip(table["rows"], scores, sources)]
    facts = dict(model=args.model, table=args.table, caption=table["caption"], stage=table["stage"],
                 inference=table["inference"], config=args.config, set=args.set, max_steps=args.max_steps,
                 data=args.data, seed=args.seed, columns=[dict(ours=c, paper=p) for c, p in table["columns"]])
    base = os.path.join(args.out, args.model, f"ablation_{args.table}")
    atomic_write(base + ".json", lambda f: f.write(json.dumps(dict(facts, rows=rows), indent=1).encode()))
    steps = "each config's steps" if args.max_steps is None else f"{args.max_steps} steps"
    how = "one trained model, each row's inference config" if table["inference"] else "each row trained"
    lines = [f"# {args.model} {args.table}: {table['caption']}", "",
             f"Ours: config `{args.config}`{' --set ' + ' '.join(args.set) if args.set else ''}, {steps}, "
             f"seed {args.seed}, data `{args.data}` ({how}); the paper's figures as it reports them. "
             "**Bold**: the paper's choice.", "",
             "| row | overrides | " + " | ".join(f"ours: {c} | paper: {p}" for c, p in table["columns"]) + " |",
             "|---|---|" + "---:|---:|" * len(table["columns"])]
    for row in rows:
        label = f"**{row['label']}**" if row["chosen"] else row["label"]
        fields = [override_text(k, v) for k, v in row["overrides"].items()]
        fields = ", ".join(fields + [f"{row['steps_factor']} x the steps"] * (row["steps_factor"] != 1)) or "-"
        cells = [f"{row['ours'][c]:.2f} | {'-' if row['paper'][c] is None else row['paper'][c]}"
                 for c, _ in table["columns"]]
        lines.append(f"| {label} | {fields} | " + " | ".join(cells) + " |")
    atomic_write(base + ".md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print(f"wrote {base}.md, {base}.json")


def main(argv=None):
    if argv is None:  # the command owns its process: SIGTERM stops it as it stops train.py (lab/distributed.py)
        distributed.note_sigterm()
    p = train.build_parser("Train (or, for inference-only rows, score) each row of a paper's ablation table and "
                           "write it beside the paper's figures (plain PyTorch; DDP under torchrun).", prog=PROG)
    p.add_argument("--table", required=True, metavar="TABLE",
                   help="the table in the paper's ABLATIONS, e.g. table5; writes OUT/<model>/ablation_TABLE.md and "
                   ".json")
    args = p.parse_args(argv)
    train.check_args(args)
    check_table(args)
    args.cache = os.path.join(args.out, "cache")  # synthetic sets: shared by every row and train.py's runs in OUT
    train.check_inputs(train.plan_chain(args.model, train.stage_overrides(args.model, args.set, args), False, args),
                       args)
    # the torchrun block, train.py's: a dead peer in one line, SIGTERM after the step with its checkpoint (a
    # stopped table resumes where it stopped)
    distributed.run_job(lambda ranks: run_ablation(args, ranks), args, argv is None, script=PROG)


if __name__ == "__main__":
    distributed.command(main, PROG)
