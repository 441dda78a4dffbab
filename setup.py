"""BlastBeat: an HTTP/HTTPS/WebSocket front server for ZeroMQ nodes."""

import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "bb", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def man_pages():
    pages = []
    for section in ("5", "7", "8"):
        files = sorted("man/" + name for name in os.listdir(os.path.join(HERE, "man"))
                       if name.endswith("." + section)) if os.path.isdir(
                           os.path.join(HERE, "man")) else []
        if files:
            pages.append(("share/man/man" + section, files))
    return pages


setup(
    name="blastbeat",
    version=VERSION,
    description="HTTP/HTTPS/WebSocket front server forwarding sessions to ZeroMQ nodes",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["bb"],
    python_requires=">=3.11",
    install_requires=["pyzmq>=24", "cryptography>=38", "configobj>=5.0.8"],
    extras_require={"test": ["pytest", "websockets>=10"]},
    entry_points={"console_scripts": ["blastbeat = bb.cli:main"]},
    data_files=man_pages(),
    classifiers=[
        "Programming Language :: Python :: 3",
        "Environment :: No Input/Output (Daemon)",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
    ],
)
