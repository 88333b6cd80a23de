// Offline stand-in, part 2 of 2 (see jetpack-pre.js): what circuit-tracer's viewer uses from transformer-circuits.pub's
// jetpack and npm's d3-jetpack@2.1.0 lacks or gets wrong under d3 v7.
(function(){
  var s = window.__d3v7_saved
  d3.timer = s.timer; d3.interval = s.interval; d3.timeout = s.timeout
  delete window.__d3v7_saved

  // 1. c.drawAxis(svg?) — viewer calls c.drawAxis(c.svgBot) and c.drawAxis(); npm jetpack only has d3.drawAxis(c).
  var conventions0 = d3.conventions
  d3.conventions = function(c){
    c = conventions0(c)
    c.drawAxis = function(svg){
      svg = svg || c.svg
      var xAxisSel = svg.append('g').attr('class', 'x axis')
        .attr('transform', 'translate(0,' + c.height + ')').call(c.xAxis)
      var yAxisSel = svg.append('g').attr('class', 'y axis').call(c.yAxis)
      return {xAxisSel: xAxisSel, yAxisSel: yAxisSel}
    }
    return c
  }

  // 2. d3.nestBy without d3-collection (not in d3 v7): array of groups, each with .key, first-seen order.
  d3.nestBy = function(array, key){
    return d3.groups(array, key).map(function(kv){ var v = kv[1]; v.key = kv[0] + ''; return v })
  }

  // 3. d3.attachTooltip with d3 v6+ listener signature (event, d); npm version reads d3.event.
  d3.attachTooltip = function(sel, tooltipSel, fieldFns){
    if (!sel.size()) return
    tooltipSel = tooltipSel || d3.select('.tooltip')
    var d0 = sel.datum()
    fieldFns = fieldFns || Object.keys(d0)
      .filter(function(k){ return typeof d0[k] != 'object' })
      .map(function(k){ return function(d){ return k + ': <b>' + d[k] + '</b>' } })
    sel
      .on('mouseover.attachTooltip', function(ev, d){
        tooltipSel.classed('tooltip-hidden', false).html('')
          .appendMany('div', fieldFns).html(function(fn){ return fn(d) })
        d3.select(this).classed('tooltipped', true)
      })
      .on('mousemove.attachTooltip', function(ev){
        if (!tooltipSel.size()) return
        var bb = tooltipSel.node().getBoundingClientRect()
        var left = d3.clamp(20, ev.clientX - bb.width/2, window.innerWidth - bb.width - 20)
        var top = innerHeight > ev.clientY + 20 + bb.height ? ev.clientY + 20 : ev.clientY - bb.height - 20
        tooltipSel.style('left', left + 'px').style('top', top + 'px')
      })
      .on('mouseout.attachTooltip', function(){
        tooltipSel.classed('tooltip-hidden', true)
        d3.selectAll('.tooltipped').classed('tooltipped', false)
      })
  }

  // 4. .st({gap: 4}) -> '4px' (npm jetpack's px list lacks 'gap').
  var st0 = d3.selection.prototype.st
  d3.selection.prototype.st = function(name, value){
    if (name && typeof name == 'object' && 'gap' in name){
      var g = name.gap, px = function(v){ return typeof v == 'number' ? v + 'px' : v }
      name = Object.assign({}, name, {gap: typeof g == 'function' ? function(){ return px(g.apply(this, arguments)) } : px(g)})
    }
    return arguments.length > 1 ? st0.call(this, name, value) : st0.call(this, name)
  }
})()
