"""Click options built from the config dataclasses: one flag per field, none hand-copied.

A field ``inner_lr_mu`` becomes ``--inner-lr-mu``; a bool field ``rotations`` becomes
``--rotations/--no-rotations`` (a field may name its own spelling: ``--first-order/--second-order``);
a list field ``seeds`` becomes ``--seeds 0,1,2``.
The type, the choices and the lower bound come from the field (its ``metadata``, see
:func:`bayesnas.config.setting`), the help text too, followed by the default. Every option
defaults to None, which means "not given": the config file and then the dataclass's own
default decide (CLI > config file > defaults).
"""
import dataclasses

import click

from ..config import MAX_IMAGE_SIZE, MAX_SEED, check_field
from ..errors import ConfigError

#: the type of every seed flag: what torch.manual_seed takes, with room for derived streams
SEED = click.IntRange(0, MAX_SEED)
#: the type of every image-size flag
IMAGE_SIZE = click.IntRange(1, MAX_IMAGE_SIZE)


def _default_text(value):
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _list_text(value):
    return "none" if value is None else ",".join(map(str, value)) or "''"


def _items(field):
    """A click callback: a tuple field's comma-separated items, each checked as the field declares."""
    kind, noun = field.metadata["each"]

    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
            check_field(field, items)
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {noun}s, got {value!r}") from None
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
        return items

    return parse


def field_option(field, default=dataclasses.MISSING):
    """The click option of one config field (``default``: the value its help states, when the
    caller applies another default than the field's own)."""
    meta = field.metadata
    flag = "--" + field.name.replace("_", "-")
    shown = field.default if default is dataclasses.MISSING else default
    help_text = f"{meta.get('help', '')} [default: {_list_text(shown) if 'each' in meta else _default_text(shown)}]"
    if "each" in meta:
        return click.option(flag, field.name, type=str, default=None, callback=_items(field), help=help_text)
    if field.type is bool:
        return click.option(meta.get("flag", f"{flag}/--no-{flag[2:]}"), field.name, default=None, help=help_text)
    bounds = {"min": meta["min"], "min_open": meta["min_open"]} if "min" in meta else {}
    if "max" in meta:
        bounds["max"] = meta["max"]
    if "choices" in meta:
        kind = click.Choice(list(meta["choices"]))
    elif field.type is int:
        kind = click.IntRange(**bounds) if bounds else int
    elif field.type is float:
        kind = click.FloatRange(**bounds) if bounds else float
    elif field.name == "data":
        kind = click.Path(dir_okay=False)
    else:
        kind = str
    return click.option(flag, field.name, type=kind, default=None, help=help_text)


def config_options(cls, skip=(), defaults=None):
    """Decorator: one option per field of the dataclass ``cls`` (except those in ``skip``), in field order.

    ``defaults``: the defaults the command applies in place of the fields' own (a benchmark's
    smaller budget), shown in ``--help``.
    """
    defaults = defaults or {}
    options = [field_option(f, defaults.get(f.name, dataclasses.MISSING)) for f in dataclasses.fields(cls)
               if f.name not in skip]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def run_options(kind):
    """The options every training command shares: --config, --quiet and --tensorboard."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help=f"JSON file of {kind} settings (flags override it)."),
        click.option("--quiet", is_flag=True,
                     help="No progress bar and no log lines (validation scores, warnings) on the console; "
                          "RUN/log.txt gets them either way."),
        click.option("--tensorboard", is_flag=True,
                     help="Also write TensorBoard event files to RUN/tensorboard/ "
                          "(pip install 'bayesnas[tensorboard]')."),
    ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
