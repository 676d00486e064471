"""The built-in ``hookkit eval`` tasks, one module each (listed in ``hookkit.registry.TASKS``)."""
