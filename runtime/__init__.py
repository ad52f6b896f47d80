"""edgeship's device side: verify, install and run signed model bundles.

Public, stable modules: ``runtime.errors``, ``runtime.manifest``, ``runtime.trust``,
``runtime.verify``, ``runtime.bundle``, ``runtime.store``, ``runtime.install``, ``runtime.model``.
This package never imports ``packager`` or any host-only dependency.
"""

__version__ = "0.1.0"
