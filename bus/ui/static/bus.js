// Live refresh pauses while the operator is choosing: a checked box, an open list, a field in use.
function busIdle() {
  return !document.querySelector("[data-pause] input:checked, [data-pause] details[open]") &&
    !(document.activeElement && document.activeElement.closest("[data-pause] form, form[data-pause]"));
}
