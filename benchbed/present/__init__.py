"""What people read (layer 12): formatted values, figures, the HTML report, the gate's outputs.

``format`` (the one value formatter), ``figures`` (plotly builders), ``display`` (the read side the
dashboard and the report share), ``report_html`` (``benchbed report``), ``gate_cli``
(``benchbed gate``), ``ranked`` (the table ``benchbed run`` prints). May import ``benchbed.analyse``
and earlier layers; nothing here computes a statistic or a verdict itself.
"""
