"""cl-run's Optuna sweeper, `hydra/sweeper=optuna`: Hydra instantiates sweepers from its plugin namespace only, so
the class lives here; what it adds to hydra-optuna-sweeper's is cl_runner.search's."""
from hydra.core.plugins import Plugins
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from cl_runner import search


class OptunaSearch(OptunaSweeper):
    """The Optuna sweeper of hydra-optuna-sweeper, maximizing `search.objective` and continuing its study, kept in
    the sweep folder, when run again (cl_runner.search)."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        search.route_optuna_logs()
        super().setup(hydra_context=hydra_context, task_function=search.TrialObjective(task_function),
                      config=config)

    def sweep(self, arguments: list[str]) -> None:
        search.run_search(self.sweeper, lambda: super(OptunaSearch, self).sweep(arguments))


def register() -> None:
    """Make `hydra/sweeper=optuna` this sweeper (cl-run calls it before Hydra starts): Hydra's scan of its plugins
    (which `Plugins.instance()` runs, once per process) misses this package in an editable install, so the class
    is registered by hand, and the configs are stored after the scan, which stores the plugin's own."""
    Plugins.instance().register(OptunaSearch)
    search.store_configs()
