// falf_fx HTML report: one graph view at a time (module drill-down), breadcrumbs, group highlighting.
(function () {
  "use strict";
  const views = Array.from(document.querySelectorAll("#views .view"));
  const byId = new Map(views.map((v) => [v.id, v]));
  const crumbs = document.getElementById("crumbs");
  let fit = true;

  function chain(view) {
    const out = [];
    for (let v = view; v; v = byId.get(v.dataset.parent)) out.unshift(v);
    return out;
  }

  function drawCrumbs(view) {
    crumbs.textContent = "";
    chain(view).forEach((v, i, all) => {
      if (i) crumbs.append(Object.assign(document.createElement("span"), { className: "sep", textContent: "›" }));
      const link = Object.assign(document.createElement(i === all.length - 1 ? "b" : "a"),
                                 { textContent: v.dataset.title });
      if (link.tagName === "A") link.href = "#" + v.id;
      crumbs.append(link);
    });
    const toggle = Object.assign(document.createElement("button"), { textContent: fit ? "actual size" : "fit width" });
    toggle.addEventListener("click", () => { fit = !fit; show(view.id, false); });
    crumbs.append(toggle);
  }

  function show(id, scroll) {
    const view = byId.get(id);
    if (!view) return false;
    views.forEach((v) => { v.hidden = v !== view; v.classList.toggle("fit", fit); });
    drawCrumbs(view);
    document.body.dataset.view = id;
    if (scroll) document.getElementById("graph").scrollIntoView();
    return true;
  }

  function highlight(group) {
    document.querySelectorAll("#views g.node.hl").forEach((n) => n.classList.remove("hl"));
    document.querySelectorAll("tr.group.selected").forEach((r) => r.classList.remove("selected"));
    if (group === null) return;
    document.querySelectorAll(`#views g.node.g-${group}`).forEach((n) => n.classList.add("hl"));
    document.querySelectorAll(`tr.group[data-group="${group}"]`).forEach((r) => r.classList.add("selected"));
  }

  window.addEventListener("hashchange", () => show(location.hash.slice(1), true));
  document.querySelectorAll("tr.group").forEach((row) => row.addEventListener("click", () => {
    if (row.dataset.view) { history.replaceState(null, "", "#" + row.dataset.view); show(row.dataset.view, true); }
    highlight(row.dataset.group);
  }));
  if (!show(location.hash.slice(1), true) && views.length) show(views[0].id, false);
  document.body.dataset.ready = "1";
})();
