"""Text tool environments on Gymnasium (imported as ``agentrl.envs``).

    import agentrl.envs as envs
    env = envs.make("agentrl/ShellQuest-v0", max_turns=30)
    obs, info = env.reset(seed=0)

Importing this package registers the built-in env ids but imports no env implementation.
"""

from .base import EpisodeStats, Message, Observation, Task, ToolEnv, run_episode, shared_sandbox
from .parsing import HermesParser, JSONParser, ParseResult, ToolCall, get_parser, register_parser
from .registry import DESCRIPTIONS, ENTRY_POINT_GROUP, EnvOptionError, check_id, check_options, env_id, env_options, list_envs, load_plugins, make, register_env
from .spaces import Messages, UnicodeText
from .tools import Tool, ToolOutput, tool

# Built-in environments: (name, "module:Class", description). Each env module documents its
# source, reward and horizon; the README lists them.
BUILTIN: list[tuple[str, str, str]] = [
    ("ShellQuest", "agentrl.envs.shellquest:ShellQuestEnv", "bash chores in a generated file tree; horizon 5-100+ turns; small-vocab mode for tiny models"),
    ("SQL", "agentrl.envs.sql:SQLEnv", "SQLite questions (select, join, group by, subquery) on a generated database; reward by result match"),
    ("CodeRepair", "agentrl.envs.coderepair:CodeRepairEnv", "HumanEval (164): write or repair a function, run visible tests, submit; hidden tests grade; horizon 3-16"),
    ("PythonTool", "agentrl.envs.pythontool:PythonToolEnv", "reasoning-gym procedural tasks (8 generators) with a stateful Python session; scorer reward; horizon 3-10"),
    ("ScienceWorld", "agentrl.envs.scienceworld:ScienceWorldEnv", "ScienceWorld (30 science task types, train/dev/test variations); native score reward; horizon 3-750 turns"),
    ("TextWorld", "agentrl.envs.textworld_env:TextWorldEnv", "TextWorld quests generated offline and cached; native score reward; horizon quest_length to ~8x"),
]

for _name, _entry, _desc in BUILTIN:
    register_env(_name, _entry, description=_desc)

__all__ = [
    "DESCRIPTIONS",
    "ENTRY_POINT_GROUP",
    "EnvOptionError",
    "EpisodeStats",
    "HermesParser",
    "JSONParser",
    "Message",
    "Messages",
    "Observation",
    "ParseResult",
    "Task",
    "Tool",
    "ToolCall",
    "ToolEnv",
    "ToolOutput",
    "UnicodeText",
    "check_id",
    "check_options",
    "env_id",
    "env_options",
    "get_parser",
    "list_envs",
    "load_plugins",
    "make",
    "register_env",
    "register_parser",
    "run_episode",
    "shared_sandbox",
    "tool",
]
