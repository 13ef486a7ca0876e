"""Every view rollcall builds, by name: what the runner keeps live and a rebuild can rebuild."""

from __future__ import annotations

from typing import Final

from projections.occupancy import OccupancyView
from projections.occurrences import OccurrencesView
from projections.payments import PaymentsView
from projections.roster import RosterView
from projections.roster_history import RosterHistoryView
from projections.view import BulkView

VIEWS: Final[dict[str, BulkView]] = {
    view.name: view
    for view in (
        RosterView(),
        OccupancyView(),
        PaymentsView(),
        OccurrencesView(),
        RosterHistoryView(),
    )
}
VIEW_NAMES: Final = tuple(VIEWS)
