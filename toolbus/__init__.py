"""The ToolBus library: ATerms, signatures, tool descriptors, tool instances and the wire protocol.

Pure Python; imports nothing of Celery, Flask or the rest of this repository.
"""

from toolbus.aterm import ATerm, Environment, ParseError, make, parse
from toolbus.descriptors import ToolDescriptor, default_tools_path, load_tools
from toolbus.errors import (
    DescriptorError,
    SignatureError,
    ToolBusError,
    ToolCrashed,
    ToolError,
    ToolTimeout,
    TransactionError,
)
from toolbus.external import ExternalTool
from toolbus.instances import ToolInstance, start_tool
from toolbus.internal import InternalTool

__all__ = [
    "ATerm",
    "DescriptorError",
    "Environment",
    "ExternalTool",
    "InternalTool",
    "ParseError",
    "SignatureError",
    "ToolBusError",
    "ToolCrashed",
    "ToolDescriptor",
    "ToolError",
    "ToolInstance",
    "ToolTimeout",
    "TransactionError",
    "default_tools_path",
    "load_tools",
    "make",
    "parse",
    "start_tool",
]
